"""The job a command is running: the params values it reads, checked against DVC's tracking under DVC.

    job = bind_job(ctx, cfg, "train", {"dataset": "dtd", "method": "prompt", "seed": 1})
    job.name                     # train-dtd-prompt-s1 (the DVC stage, the Snakemake job)
    job.params                   # {"model": {...}, "train.epochs": 10, …}: what the job's record states

Every stage command calls :func:`bind_job` with the config it will really use (after its own
command-line options), before any work. Under DVC it first holds dvc.yaml to the provenance invariant
(:func:`promptbias.pipeline.dvc.verify_tracking`); the returned values go into the job's record
(train.json, the metrics sidecar, probe sidecars, pretrain.json), so a record always names the values
that produced it. It also deletes the temporaries that a killed earlier attempt of the job left beside
its output files (Snakemake and DVC clear a job's declared outputs before a rerun, never those).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from promptbias.errors import UserError
from promptbias.io import remove_stale_temps
from promptbias.joblock import claim, release_all
from promptbias.pipeline.dvc import dvc_stage_name, verify_tracking
from promptbias.pipeline.plan import Pipeline


@dataclass(frozen=True)
class BoundJob:
    name: str
    params: dict[str, Any]

    def record(self) -> dict[str, Any]:
        """What every output record of the job states about it."""
        return {"job": self.name, "params": self.params}


def bind_job(ctx: Any, cfg: dict[str, Any], stage: str, wildcards: dict[str, Any] | None = None) -> BoundJob:
    """The job of ``stage`` with ``wildcards`` under ``cfg`` (``ctx``: the CLI's params files)."""
    pipe = Pipeline(cfg, tuple(ctx.params_files), tuple(ctx.overrides))
    job = pipe.job(stage, wildcards or {})
    dvc_stage = dvc_stage_name()
    if dvc_stage is not None:
        if dvc_stage != job.name:
            raise UserError(
                f"DVC stage {dvc_stage} runs the command of job {job.name} — regenerate dvc.yaml (`promptbias dvc-yaml`)"
            )
        verify_tracking(pipe, job)
    claim(job.name)  # one writer per job, one engine per workspace (exit 2 naming the other process)
    _release_when_the_command_ends()
    for out in job.out_paths:
        remove_stale_temps(out)  # one job owns each output: a temporary beside it is a killed attempt's
    return BoundJob(job.name, pipe.param_values(job.params))


def _release_when_the_command_ends() -> None:
    """Drop the job locks when the click command closes — also for a command invoked in-process (tests,
    click's CliRunner), whose process goes on."""
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.find_root().call_on_close(release_all)
