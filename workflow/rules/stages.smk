# One wildcard rule per stage of src/promptbias/pipeline/spec.py (fetch, split, cache, pretrain_demo, train,
# evaluate, aggregate, probe, render). Inputs, the command line and the params values of a job come from
# the same Pipeline object that writes dvc.yaml, so both engines run identical jobs.
#   resources: gpu=1 on GPU stages (0 when device: cpu) — the job itself picks a free GPU (devices.py)
#   threads: what the job really uses (decoding workers on a GPU; cpu_threads / demo.pretrain_threads on a CPU)
#   params.values: the resolved values of the keys the command reads — Snakemake's params trigger sees an
#     edit of any of them, and nothing else: the command line (which names the params files) is built in
#     the run: block, so adding a layer file reruns only the jobs whose values change
#   log: logs/<stage>/... per job

import shlex

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


def _run_job(rule_name, wildcards, log):
    """The job's promptbias command, its output into the job's log (braces escaped for shell())."""
    line = f"( {PIPE.command(_job(rule_name, wildcards))} ) > {shlex.quote(str(log[0]))} 2>&1"
    shell(line.replace("{", "{{").replace("}", "}}"))


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
            values=lambda wc, s=_stage: PIPE.param_values(_job(s.name, wc).params),
        threads: _rule_threads(PIPE, _stage)
        resources:
            gpu=int(_stage.gpu and PIPE.cfg["device"] != "cpu"),
        run:
            _run_job(rule, wildcards, log)
