"""``promptbias run --gpus N``: DVC decides what is stale, Snakemake runs it in parallel, DVC commits.

    promptbias run --gpus 4                                   # the paper config (params.yaml + dvc.yaml)
    promptbias --params params.yaml --params config/demo.yaml run --gpus 0      # a layered config
    promptbias run --gpus 4 -n                                # show the plan, run nothing
    promptbias run --gpus 4 -- --profile workflow/profiles/slurm   # extra arguments go to snakemake

Snakemake keeps its provenance in ``.snakemake/`` (not in git), so after a clone or a checkout it
cannot tell that params changed; DVC can (``dvc.lock`` is committed). The driver therefore

1. checks that ``dvc.yaml`` matches the stage spec for these params files (``promptbias dvc-yaml``);
2. asks ``dvc status --json`` which stages are stale and maps them to their outputs;
3. ``snakemake --touch``: marks everything Snakemake would otherwise rerun (on mtimes) as up to date;
4. ``snakemake --cores all --resources gpu=N --forcerun <stale outputs>``: reruns exactly those jobs and,
   by timestamps, everything downstream of them, N GPU jobs at a time;
5. ``dvc commit --force`` on success, so ``dvc.lock`` records the new hashes (``dvc status`` is clean).

Plain ``snakemake …`` and plain ``dvc repro`` keep working on their own.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from promptbias.errors import UserError
from promptbias.pipeline import DEFAULT_PARAMS, Pipeline


def _tool(name: str) -> str:
    """The tool installed beside this Python (the project's venv), else the one on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise UserError(f"{name}: not found — install the project (make setup) or put {name} on PATH")
    return found


def stale_stages(dvc: str = "dvc") -> dict[str, Any]:
    """``dvc status --json`` as {stage name: changes} (empty when everything is up to date)."""
    res = subprocess.run([dvc, "status", "--json", "-q"], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"dvc status failed ({last}) — run `dvc status` to see why (is this a DVC repo?)")
    text = res.stdout.strip()
    status = json.loads(text) if text else {}
    return {name.split(":", 1)[-1]: changes for name, changes in status.items()}


def snakemake_config_args(params_files: tuple[str, ...]) -> list[str]:
    """``--configfile`` arguments for the files after params.yaml (the Snakefile's ``configfile:``)."""
    if not params_files or params_files[0] != DEFAULT_PARAMS:
        raise UserError(
            f"run: the first params file must be {DEFAULT_PARAMS} (the Snakefile's configfile) — "
            f"got {' + '.join(params_files)}"
        )
    extra = list(params_files[1:])
    return ["--configfile", *extra] if extra else []


@click.command("run", context_settings={"ignore_unknown_options": True})
@click.option(
    "--gpus", type=click.IntRange(min=0), default=None, help="GPU jobs at a time (default: visible GPUs)."
)
@click.option("--cores", default="all", show_default=True, help="Snakemake --cores.")
@click.option("-n", "--dry-run", is_flag=True, help="Show what DVC finds stale and what Snakemake would run.")
@click.option(
    "--target", "targets", multiple=True, default=("all",), show_default=True, help="Snakemake target."
)
@click.argument("snakemake_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def run_command(
    ctx: Any,
    gpus: int | None,
    cores: str,
    dry_run: bool,
    targets: tuple[str, ...],
    snakemake_args: tuple[str, ...],
) -> None:
    """Run the stale part of the DAG: DVC decides, Snakemake runs (N GPU jobs at a time), DVC commits."""
    if ctx.overrides:
        raise UserError(
            "run: --set is not seen by DVC — put the value in a params file and pass it with --params"
        )
    pipe = Pipeline.from_files(ctx.params_files)
    dvc_file = Path("dvc.yaml")
    if not dvc_file.is_file() or dvc_file.read_text() != pipe.dvc_yaml():
        regen = shlex.join(
            ["promptbias", *(a for f in ctx.params_files for a in ("--params", f)), "dvc-yaml"]
        )
        raise UserError(f"dvc.yaml does not match {' + '.join(ctx.params_files)} — run `{regen}` first")
    if gpus is None:
        from promptbias.devices import visible_gpus

        gpus = len(visible_gpus())
    dvc, snakemake = _tool("dvc"), _tool("snakemake")
    config_args = snakemake_config_args(ctx.params_files)

    stale = stale_stages(dvc)
    outs_by_stage = {job.name: job.out_paths for job in pipe.jobs()}
    unknown = sorted(set(stale) - set(outs_by_stage))
    if unknown:
        raise UserError(
            f"dvc status names stages the spec does not know ({', '.join(unknown[:3])}) — regenerate dvc.yaml"
        )
    forced = [path for name in stale for path in outs_by_stage[name]]
    click.echo(f"promptbias run: DVC finds {len(stale)} stale stage(s) of {len(outs_by_stage)}", err=True)
    for name in list(stale)[:20]:
        click.echo(f"  {name}", err=True)

    # every output is written atomically, so a file left by a killed run is complete: never refuse it
    base = [snakemake, *targets, *config_args, "--rerun-incomplete", *snakemake_args]
    _call([*base, "--touch", "--cores", "1"], "snakemake --touch")
    run = [*base, "--cores", cores, "--resources", f"gpu={gpus}"]
    if forced:
        run += ["--forcerun", *forced]
    if dry_run:
        run.append("--dry-run")
    _call(run, "snakemake")
    if not dry_run:
        # commit the stages whose outputs exist (a --target run builds only part of dvc.yaml)
        built = [job.name for job in pipe.jobs() if all(Path(p).exists() for p in job.out_paths)]
        if built:
            _call([dvc, "commit", "--force", "--quiet", *built], "dvc commit")
        click.echo("ok: DAG up to date; dvc.lock updated (commit it with git)", err=True)


def _call(argv: list[str], what: str) -> None:
    click.echo(f"$ {shlex.join([Path(argv[0]).name, *argv[1:]])[:400]}", err=True)
    proc = subprocess.Popen(argv)
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # the child got the Ctrl-C too: let it clean up (Snakemake's lock) and stop
        code = proc.wait()
        click.echo(f"interrupted: {what} stopped (exit {code}); rerun `promptbias run` to continue", err=True)
        raise SystemExit(130) from None
    if code != 0:
        raise UserError(f"{what} failed (exit {code}) — see its output above; fix and rerun")
