"""``promptbias run --gpus N``: DVC decides what is stale, Snakemake runs it, DVC commits — in rounds.

    promptbias run --gpus 4                                   # this repo's layering (dvc.yaml's params)
    promptbias --params params.yaml --params config/demo.yaml run --gpus 0      # a layered config
    promptbias run --gpus 4 -n                                # the plan; writes nothing
    promptbias run --gpus 4 --force 'train-eurosat-*'         # rerun these stages too (code changed)
    promptbias run --gpus 4 -- --profile workflow/profiles/slurm   # extra arguments go to snakemake

Snakemake keeps its provenance in ``.snakemake/`` (not in git) and decides partly on file times (an
input newer than its output, unless it is at most 1 MB and its recorded checksum is unchanged), which
mean nothing after a clone, a checkout or a ``dvc pull``; DVC compares content with the committed
``dvc.lock``. So the driver, after checking once that ``dvc.yaml`` is what the stage spec generates for
these params files, repeats until ``dvc status`` is clean (``check-dvc-yaml``, stale after any edit of a
params file, is committed without running: that check has just passed):

1. ``dvc status --json``: the stale stages; of those, the ones with no stale stage upstream (the frontier);
2. Snakemake runs exactly the frontier's jobs (``--forcerun`` on their outputs, ``--rerun-triggers
   input``: no decision on file times), N GPU jobs at a time;
3. each job's record (train.json, the metrics sidecar, the probe sidecars, pretrain.json) must state the
   params values that dvc.yaml tracks for it; then ``dvc commit`` of exactly those stages.

It prints its rounds and the ``ok:`` line on stdout and says "dvc.lock updated" only when it committed a
stage. A Snakemake that fails while ``.snakemake/locks`` holds a lock (a killed run's) is reported in one
line naming ``snakemake --unlock``.

A stage whose inputs an upstream rerun reproduced byte for byte is clean in the next round, so nothing
below it reruns: after a ``dvc pull`` only the data stages (their outputs are not pushed) run again.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from promptbias.errors import UserError
from promptbias.pipeline import DEFAULT_PARAMS, Job, Pipeline
from promptbias.pipeline.dvc import CHECK_STAGE, check_fresh

SNAKEMAKE_LOCKS = ".snakemake/locks"  # Snakemake's working-directory locks (a killed run leaves them)


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
    res = subprocess.run([dvc, "status", "--json"], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"dvc status failed ({last}) — run `dvc status` to see why (is this a DVC repo?)")
    lines = [line for line in res.stdout.splitlines() if line.strip().startswith("{")]
    if not lines:
        raise UserError(
            f"dvc status --json printed no JSON ({res.stdout.strip()[:120]!r}) — run `dvc status`"
        )
    status = json.loads(lines[-1])
    return {name.split(":", 1)[-1]: changes for name, changes in status.items()}


def frontier(jobs: dict[str, Job], stale: set[str]) -> list[str]:
    """The stale jobs none of whose ancestors is stale, in DAG order."""
    producer = {path: name for name, job in jobs.items() for path in job.out_paths}
    parents = {name: {producer[d] for d in job.deps if d in producer} for name, job in jobs.items()}
    memo: dict[str, set[str]] = {}

    def ancestors(name: str) -> set[str]:
        if name not in memo:
            memo[name] = set()
            for parent in parents[name]:
                memo[name] |= {parent} | ancestors(parent)
        return memo[name]

    return [name for name in jobs if name in stale and not (ancestors(name) & stale)]


def snakemake_config_args(params_files: tuple[str, ...]) -> list[str]:
    """``--configfile`` arguments for the files after params.yaml (the Snakefile's ``configfile:``)."""
    if not params_files or params_files[0] != DEFAULT_PARAMS:
        raise UserError(
            f"run: the first params file must be {DEFAULT_PARAMS} (the Snakefile's configfile) — "
            f"got {' + '.join(params_files)}"
        )
    extra = list(params_files[1:])
    return ["--configfile", *extra] if extra else []


def check_records(pipe: Pipeline, jobs: list[Job]) -> None:
    """UserError unless every record of these jobs states the params values this config gives them."""
    for job in jobs:
        want = json.loads(json.dumps(pipe.param_values(job.params)))
        for record in job.records:
            try:
                stated = json.loads(Path(record).read_text()).get("params")
            except (OSError, ValueError):
                raise UserError(
                    f"{record}: missing or unreadable after job {job.name} ran — rerun `promptbias run`"
                ) from None
            if stated != want:
                raise UserError(
                    f"{record}: states params other than those dvc.yaml tracks for {job.name} — nothing committed; "
                    "rerun `promptbias run`"
                )


@click.command("run", context_settings={"ignore_unknown_options": True})
@click.option(
    "--gpus", type=click.IntRange(min=0), default=None, help="GPU jobs at a time (default: visible GPUs)."
)
@click.option("--cores", default="all", show_default=True, help="Snakemake --cores.")
@click.option(
    "-n", "--dry-run", is_flag=True, help="Show what DVC finds stale and what would run first; write nothing."
)
@click.option(
    "--force",
    "forced",
    multiple=True,
    metavar="STAGE",
    help="Also rerun these stages (names or shell patterns, e.g. 'train-*'), as after a code change.",
)
@click.argument("snakemake_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def run_command(
    ctx: Any,
    gpus: int | None,
    cores: str,
    dry_run: bool,
    forced: tuple[str, ...],
    snakemake_args: tuple[str, ...],
) -> None:
    """Run the stale part of the DAG: DVC decides, Snakemake runs (N GPU jobs at a time), DVC commits."""
    if ctx.overrides:
        raise UserError(
            "run: --set is not seen by DVC — put the value in a params file and pass it with --params"
        )
    pipe = Pipeline.from_files(ctx.params_files)
    check_fresh(pipe)
    if gpus is None:
        from promptbias.devices import visible_gpus

        gpus = len(visible_gpus())
    dvc, snakemake = _tool("dvc"), _tool("snakemake")
    jobs = {job.name: job for job in pipe.jobs()}
    force = {name for name in jobs if any(fnmatch.fnmatchcase(name, pattern) for pattern in forced)}
    if forced and not force:
        raise UserError(f"--force {forced[0]}: no stage of dvc.yaml matches — see `dvc stage list`")
    # options after the targets: --forcerun, --configfile and --resources take several values each
    options = [*snakemake_config_args(ctx.params_files), "--rerun-triggers", "input", "--rerun-incomplete"]
    options += ["--cores", cores, "--resources", f"gpu={gpus}", *snakemake_args]

    done: set[str] = set()
    for round_no in range(1, len(jobs) + 2):
        stale = stale_stages(dvc) | ({name: "forced" for name in force} if round_no == 1 else {})
        if stale.pop(CHECK_STAGE, None) is not None:  # a params file changed; check_fresh: dvc.yaml fits it
            if dry_run:
                click.echo(f"  {CHECK_STAGE} (a params file changed; dvc.yaml matches it)")
            else:
                _call([dvc, "commit", "--force", "--quiet", CHECK_STAGE], "dvc commit")
                done.add(CHECK_STAGE)
        unknown = sorted(set(stale) - set(jobs))
        if unknown:
            raise UserError(
                f"dvc status names stages the spec does not know ({', '.join(unknown[:3])}) — regenerate dvc.yaml"
            )
        if not stale:
            break
        todo = frontier(jobs, set(stale))
        click.echo(
            f"promptbias run: round {round_no}: DVC finds {len(stale)} stale stage(s) of {len(jobs)}; running {len(todo)}"
        )
        for name in todo[:20]:
            click.echo(f"  {name}")
        if set(todo) & done:
            again = sorted(set(todo) & done)[0]
            raise UserError(
                f"{again} is still stale after it ran — see `dvc status {again}`; nothing more committed"
            )
        outputs = [path for name in todo for path in jobs[name].out_paths]
        snakemake_argv = [snakemake, *outputs, "--forcerun", *outputs, *options]
        if dry_run:
            _call([*snakemake_argv, "--dry-run"], "snakemake --dry-run")
            click.echo("dry run: later rounds are decided by what this one changes; nothing was written")
            return
        _call(snakemake_argv, "snakemake")
        check_records(pipe, [jobs[name] for name in todo])
        _call([dvc, "commit", "--force", "--quiet", *todo], "dvc commit")
        done |= set(todo)
    else:
        raise UserError("promptbias run: the DAG did not settle — see `dvc status`")
    ran = len(done - {CHECK_STAGE})
    if dry_run or not done:  # nothing committed: dvc.lock is as it was
        click.echo(f"ok: DAG up to date (nothing to run){'; nothing was written' if dry_run else ''}")
    else:
        click.echo(f"ok: DAG up to date ({ran} stage(s) ran); dvc.lock updated (commit it with git)")


def _call(argv: list[str], what: str) -> None:
    click.echo(f"$ {shlex.join([Path(argv[0]).name, *argv[1:]])[:400]}")
    proc = subprocess.Popen(argv)
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # the child got the Ctrl-C too: let it clean up (Snakemake's lock) and stop
        code = proc.wait()
        click.echo(f"interrupted: {what} stopped (exit {code}); rerun `promptbias run` to continue", err=True)
        raise SystemExit(130) from None
    if code != 0:
        if what == "snakemake" and any(Path(SNAKEMAKE_LOCKS).glob("*")):
            raise UserError(
                f"snakemake failed (exit {code}): {SNAKEMAKE_LOCKS} holds a lock — another Snakemake runs here, "
                "or a killed one left it: if none runs, `snakemake --unlock` (same --configfile), then rerun"
            )
        raise UserError(f"{what} failed (exit {code}) — see its output above; fix and rerun")
