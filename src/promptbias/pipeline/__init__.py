"""The pipeline, described once: stages → concrete jobs → dvc.yaml and the Snakemake rules.

    from promptbias.pipeline import Pipeline
    pipe = Pipeline.from_files(["params.yaml", "config/demo.yaml"])
    [job.name for job in pipe.jobs()]            # every job of this config, in DAG order

* :mod:`~promptbias.pipeline.spec` — the stages: command, outputs, matrix, deps, params keys;
* :mod:`~promptbias.pipeline.plan` — the spec applied to one layered config (jobs, values, which file
  sets each key);
* :mod:`~promptbias.pipeline.dvc` — dvc.yaml (generated, ``promptbias dvc-yaml``) and the check that a
  DVC run reads what DVC tracks;
* :mod:`~promptbias.pipeline.snakemake` — the Snakefile's glue;
* :mod:`~promptbias.pipeline.bind` — the job a running command belongs to, and the values it records.

Both engines run the same ``promptbias`` command with the same arguments for the same files.
"""

from promptbias.pipeline.plan import DEFAULT_PARAMS, Job, Pipeline, get_key, has_key, leaves
from promptbias.pipeline.spec import STAGE_BY_NAME, STAGE_BY_RULE, STAGES, Out, Stage

__all__ = [
    "DEFAULT_PARAMS",
    "STAGES",
    "STAGE_BY_NAME",
    "STAGE_BY_RULE",
    "Job",
    "Out",
    "Pipeline",
    "Stage",
    "get_key",
    "has_key",
    "leaves",
]
