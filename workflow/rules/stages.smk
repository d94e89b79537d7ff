# One wildcard rule per stage of src/promptbias/pipeline/spec.py (fetch, split, cache, pretrain_demo, train,
# evaluate, aggregate, probe, render). Inputs, the command line and the params values of a job come from
# the same Pipeline object that writes dvc.yaml, so both engines run identical jobs.
#   resources: gpu=1 on GPU stages (0 when device: cpu) — the job itself picks a free GPU (devices.py);
#     on SLURM also account, partition, runtime and mem_mb from the config's `slurm` section
#   threads: what the job really uses (decoding workers on a GPU; cpu_threads / demo.pretrain_threads on a CPU)
#   params.values: the resolved values of the keys the command reads — Snakemake's params trigger sees an
#     edit of any of them, and nothing else: params.cmd (which names the params files) is a function of the
#     job's input, which Snakemake treats as derived and never as a rerun trigger, so adding a layer file
#     reruns only the jobs whose values change
#   log: logs/<stage>/... per job

from promptbias.pipeline.snakemake import rule_resources as _rule_resources
from promptbias.pipeline.snakemake import rule_threads as _rule_threads
from promptbias.pipeline.snakemake import wildcard_constraints as _wildcard_constraints


wildcard_constraints:
    **_wildcard_constraints(PIPE),


def _job(stage_name, wildcards):
    return PIPE.job(stage_name, dict(wildcards))


def _output(out):
    path = directory(out.path) if out.directory else out.path
    if out.report:
        return report(path, category=out.report, patterns=list(out.patterns) if out.patterns else None)
    return path


for _stage in PIPE.stages():

    rule:
        name:
            _stage.rule_name
        input:
            lambda wc, s=_stage: _job(s.name, wc).deps,
        output:
            *[_output(o) for o in _stage.outs(PIPE.cfg)],
        log:
            _stage.log,
        params:
            cmd=lambda wc, input, s=_stage: PIPE.command(_job(s.name, wc)),
            values=lambda wc, s=_stage: PIPE.param_values(_job(s.name, wc).params),
        threads: _rule_threads(PIPE, _stage)
        resources:
            **_rule_resources(PIPE, _stage),
        shell:
            "( {params.cmd} ) > {log} 2>&1"
