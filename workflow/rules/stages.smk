# One wildcard rule per stage of src/promptbias/pipeline.py (fetch, split, cache, pretrain_demo, train,
# evaluate, aggregate, probe, render). Inputs, the command line and the params values of a job come from
# the same Pipeline object that writes dvc.yaml, so both engines run identical jobs.
#   resources: gpu=1 on GPU stages (0 when device: cpu) — the job itself picks a free GPU (devices.py)
#   params.values: the params keys the command reads, so Snakemake's params trigger sees an edit
#   log: logs/<stage>/... per job


from promptbias.pipeline import wildcard_constraints as _wildcard_constraints


wildcard_constraints:
    **_wildcard_constraints(PIPE),


def _job(stage, wildcards):
    return PIPE.job(stage.name, dict(wildcards))


def _output(out):
    path = directory(out.path) if out.directory else out.path
    if out.report:
        return report(path, category=out.report, patterns=list(out.patterns) if out.patterns else None)
    return path


def _threads(stage):
    """GPU stages on a GPU get data.num_workers CPU threads for decoding; everything else one."""
    if stage.gpu and PIPE.cfg["device"] != "cpu":
        return max(1, int(PIPE.cfg["data"].get("num_workers") or 1))
    return 1


for _stage in PIPE.stages():

    rule:
        name:
            _stage.rule_name
        input:
            lambda wc, s=_stage: _job(s, wc).deps,
        output:
            *[_output(o) for o in _stage.outs(PIPE.cfg)],
        log:
            _stage.log,
        params:
            cmd=lambda wc, s=_stage: _job(s, wc).cmd,
            values=lambda wc, s=_stage: PIPE.param_values(_job(s, wc).params),
        threads: _threads(_stage)
        resources:
            gpu=int(_stage.gpu and PIPE.cfg["device"] != "cpu"),
        shell:
            "( {params.cmd} ) > {log} 2>&1"
