"""Two engines (or one job twice) in one workspace: the second refuses in one line before touching anything.

``promptbias.joblock`` (called by ``bind_job`` at the start of every stage command): a job whose outputs
another live process is writing, or whose engine differs from the engine whose jobs run now, exits 2 with
one ``error:`` line naming the other process (pid, engine, command), and the workspace is unchanged. The
first job is held provably mid-way (``PROMPTBIAS_FAULT=…:hold``), never raced with a timer. The engines
are real process trees: a job's engine is its outermost ``dvc``/``snakemake`` ancestor, so a two-line
wrapper script named ``dvc`` or ``snakemake`` that runs the job as its child stands in for the engine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from promptbias import warm
from tests.reliability.helpers import cli_argv, describe_diff, run_cli, snapshot, sub_env, wait_for
from tests.workspace import Workspace

TRAIN = ("train", "--dataset", "demo_shapes", "--method", "bias", "--seed", "1")
EVALUATE = ("evaluate", "--dataset", "demo_shapes", "--method", "zeroshot", "--seed", "1")
HOLD = "bias/seed1/epoch1.step1.:hold"  # training holds at its first step (the run folder exists)


@pytest.fixture
def held() -> Iterator[list[tuple[subprocess.Popen, Path]]]:
    """Held jobs started by a test: killed (with their held process) whatever the test's outcome."""
    jobs: list[tuple[subprocess.Popen, Path]] = []
    yield jobs
    for proc, mark in jobs:
        if mark.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(mark.read_text()), signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _engine(tmp: Path, name: str) -> Path:
    """An executable named ``name`` that runs its arguments as a child (as an engine runs a job)."""
    path = tmp / "engines" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text('#!/bin/sh\n"$@"\n')
    path.chmod(0o755)
    return path


def _hold(ws: Workspace, jobs: list, mark: Path, *args: str, engine: Path | None = None, **env: str) -> int:
    """Start ``args`` (under ``engine``) held mid-way; the pid of the held promptbias process."""
    argv = [*([str(engine)] if engine else []), *cli_argv(ws, *args)]
    environ = sub_env(PROMPTBIAS_FAULT=HOLD, PROMPTBIAS_FAULT_MARK=str(mark), **env)
    proc = subprocess.Popen(argv, cwd=ws.path, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    jobs.append((proc, mark))
    assert wait_for(mark.exists, proc), proc.communicate()
    return int(mark.read_text())


def _refused(res: subprocess.CompletedProcess, *names: str) -> str:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def test_the_same_job_started_twice_is_refused_until_the_first_is_gone(base_ws, tmp_path, held):
    ws = base_ws.copy(tmp_path / "ws")
    first = _hold(ws, held, tmp_path / "mark", *TRAIN)
    before = snapshot(ws.path)
    line = _refused(run_cli(ws, sub_env(), *TRAIN), "train-demo_shapes-bias-s1", f"pid {first}", "train")
    assert "being written" in line and "rerun" in line
    assert snapshot(ws.path) == before, describe_diff(before, snapshot(ws.path))  # nothing written or deleted
    os.kill(first, signal.SIGKILL)  # a SIGKILL frees the lock: no stale lock file to clean by hand
    held[0][0].communicate()
    rerun = run_cli(ws, sub_env(), *TRAIN)
    assert rerun.returncode == 0, rerun.stderr


def test_a_job_of_another_engine_is_refused_even_for_other_outputs(base_ws, tmp_path, held):
    ws = base_ws.copy(tmp_path / "ws")
    dvc, snakemake = _engine(tmp_path, "dvc"), _engine(tmp_path, "snakemake")
    first = _hold(ws, held, tmp_path / "mark", *TRAIN, engine=dvc)
    engine_pid = held[0][0].pid
    before = snapshot(ws.path)
    other = subprocess.run(
        [str(snakemake), *cli_argv(ws, *EVALUATE)], cwd=ws.path, env=sub_env(), capture_output=True, text=True
    )
    line = _refused(other, "another engine", f"dvc pid {engine_pid}", f"pid {first}", "snakemake pid")
    by_hand = run_cli(ws, sub_env(), *EVALUATE)  # a command run by hand is an engine of its own too
    _refused(by_hand, "another engine", f"dvc pid {engine_pid}", "by hand")
    assert snapshot(ws.path) == before, describe_diff(before, snapshot(ws.path))
    assert line.count("\n") == 0


def test_jobs_of_one_engine_run_side_by_side(base_ws, tmp_path, held):
    """The engine lock is shared by one engine's jobs: a second job of the same engine run goes on."""
    ws = base_ws.copy(tmp_path / "ws")
    _hold(ws, held, tmp_path / "mark", *TRAIN)  # run by hand: the engine "commands"
    res = run_cli(ws, sub_env(), *EVALUATE)  # another command by hand, other outputs
    assert res.returncode == 0, res.stderr


def test_a_warm_job_is_named_by_the_process_its_engine_started(base_ws, tmp_path, held):
    """Under the warm server the job runs in a forked child; the refusal names the client (the pid the
    engine and the user know) and its engine, found from the client's parent chain."""
    path, proc = warm.start(owner=os.getpid(), log=tmp_path / "warm.log")
    try:
        ws = base_ws.copy(tmp_path / "ws")
        snakemake = _engine(tmp_path, "snakemake")
        child = _hold(ws, held, tmp_path / "mark", *TRAIN, engine=snakemake, **{warm.ENV: path})
        client = next(p for p in _children(held[0][0].pid) if p != child)
        assert child != client  # the job really ran warm (in the server's child)
        line = _refused(run_cli(ws, sub_env(), *TRAIN), f"pid {client}", f"snakemake pid {held[0][0].pid}")
        assert f"pid {child} " not in line
    finally:
        for job, mark in held:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(mark.read_text()), signal.SIGKILL)
            job.communicate()
        held.clear()
        warm.stop(proc)


def test_the_engine_of_a_process_is_its_outermost_engine_ancestor(tmp_path):
    from promptbias import joblock

    snakemake = _engine(tmp_path, "snakemake")
    probe = "from promptbias.joblock import engine_of; import os; e = engine_of(os.getpid()); print(e.kind, e.pid)"
    under = subprocess.Popen([str(snakemake), sys.executable, "-c", probe], stdout=subprocess.PIPE, text=True)
    out, _ = under.communicate(timeout=120)
    assert out.split() == ["snakemake", str(under.pid)]
    dvc = _engine(tmp_path, "dvc")  # an engine inside an engine (a sub-process of its own): the outer one
    nested = subprocess.Popen(
        [str(dvc), str(snakemake), sys.executable, "-c", probe], stdout=subprocess.PIPE, text=True
    )
    out, _ = nested.communicate(timeout=120)
    assert out.split() == ["dvc", str(nested.pid)]
    alone = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert alone.stdout.split() == ["commands", "None"]
    assert joblock._engine_kind(["/venv/bin/python", "-m", "dvc", "repro"]) == "dvc"
    assert joblock._engine_kind(["/venv/bin/python", "/venv/bin/snakemake", "all"]) == "snakemake"
    assert joblock._engine_kind(["python", "-m", "promptbias.cli", "train"]) is None
    # a SLURM job's step (the executor's `snakemake --target-jobs …`): not an engine, so two jobs on one
    # node share "commands" instead of refusing each other
    step = ["python", "-m", "snakemake", "--snakefile", "Snakefile", "--target-jobs", "train:seed=1"]
    assert joblock._engine_kind(step) is None
    assert joblock._engine_kind(["/venv/bin/snakemake", "--target-jobs", "x", "--mode", "remote"]) is None


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(stat.parent.name))
                    todo.append(int(stat.parent.name))
    return found
