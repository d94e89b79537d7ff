"""The warm server (promptbias.warm): a job handed to a forked child behaves exactly as a cold job.

Same bytes, same exit codes and error lines, signals reach the job, a crash or a dead client takes only
its own job down, a server running other code runs nothing, no server means cold. Nothing here depends
on timing: held jobs (``PROMPTBIAS_FAULT=…:hold``) write their pid to a mark file and wait for a signal.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from promptbias import warm
from tests.reliability.helpers import wait_for
from tests.workspace import REPO, Workspace, _env

TRAIN = ("train", "--dataset", "demo_shapes", "--method", "bias", "--seed", "1")
EVALUATE = ("evaluate", "--dataset", "demo_shapes", "--method", "bias", "--seed", "1")
HOLD = "bias/seed1/epoch2.step1.:hold"  # training holds at its second epoch's first step
# what may differ between two runs of the same job: rates, elapsed times, ETAs
TIMING = re.compile(r"[\d.]+ ?(?:img|step|batch|it|probe|B)/s|\[[^\]]*\]|ETA [\d:]+")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Workspace:
    return Workspace.create(tmp_path_factory.mktemp("warm") / "ws", datasets=["demo_shapes"])


@pytest.fixture
def server(tmp_path):
    log = tmp_path / "warm.log"
    path, proc = warm.start(owner=os.getpid(), log=log)
    yield path, log
    warm.stop(proc)
    assert proc.returncode is not None and not Path(path).exists()


def _cmd(ws: Workspace, *args: str) -> list[str]:
    return [sys.executable, "-m", "promptbias.cli", "--params", str(ws.params), *args]


def _run(ws: Workspace, *args: str, socket: str | None, **extra: str) -> subprocess.CompletedProcess:
    env = _env(**extra, **({warm.ENV: socket} if socket else {}))
    return subprocess.run(_cmd(ws, *args), cwd=ws.path, capture_output=True, text=True, env=env, timeout=600)


_started: list[tuple[subprocess.Popen, Path]] = []  # held jobs: never left behind by a failing test


@pytest.fixture(autouse=True)
def _no_stray_jobs():
    yield
    while _started:
        proc, mark = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if mark.exists():  # the held child (warm: a process of the server's)
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(mark.read_text()), signal.SIGKILL)


def _popen(ws: Workspace, *args: str, socket: str | None, mark: Path, fault: str = HOLD) -> subprocess.Popen:
    env = _env(
        PROMPTBIAS_FAULT=fault, PROMPTBIAS_FAULT_MARK=str(mark), **({warm.ENV: socket} if socket else {})
    )
    proc = subprocess.Popen(
        _cmd(ws, *args),
        cwd=ws.path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal, not from `&`
    )
    _started.append((proc, mark))
    return proc


def _held_pid(proc: subprocess.Popen, mark: Path) -> int:
    assert wait_for(mark.exists, proc), proc.communicate()
    return int(mark.read_text())


def _handed(log: Path) -> list[str]:
    """The commands the server ran in a child (its log's ``pid N: promptbias …`` lines)."""
    return [
        line.split(": promptbias ", 1)[1] for line in log.read_text().splitlines() if ": promptbias " in line
    ]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _timeless(path: Path) -> dict:
    doc = json.loads(path.read_text())
    return {
        k: v
        for k, v in doc.items()
        if k not in {"eval_images_per_second", "seconds", "wall_seconds_this_process"}
    }


def test_a_warm_job_writes_the_bytes_of_a_cold_one(base, server, tmp_path):
    path, log = server
    cold, hot = base.copy(tmp_path / "cold"), base.copy(tmp_path / "hot")
    for args in (TRAIN, EVALUATE):
        ran = {
            name: _run(ws, *args, socket=sock)
            for name, ws, sock in (("cold", cold, None), ("hot", hot, path))
        }
        assert [r.returncode for r in ran.values()] == [0, 0], ran
        lines = {name: TIMING.sub("", r.stdout).splitlines() for name, r in ran.items()}
        assert lines["hot"] == lines["cold"] and len(lines["hot"]) > 1  # the same progress and result lines
    assert _handed(log) == [" ".join(["--params", str(hot.params), *args]) for args in (TRAIN, EVALUATE)]
    run_dir, metrics = Path("runs/demo_shapes/bias/seed1"), Path("metrics/demo_shapes/bias")
    assert (hot.path / run_dir / "params.safetensors").read_bytes() == (
        cold.path / run_dir / "params.safetensors"
    ).read_bytes()
    assert (hot.path / metrics / "seed1.json").read_bytes() == (
        cold.path / metrics / "seed1.json"
    ).read_bytes()
    assert (
        _timeless(hot.path / metrics / "seed1.per_class.json")["evaluated"]
        == _timeless(cold.path / metrics / "seed1.per_class.json")["evaluated"]
    )


def test_exit_codes_and_the_error_line_pass_through(base, server):
    path, log = server
    cold = _run(base, "evaluate", "--dataset", "demo_nope", "--method", "bias", "--seed", "1", socket=None)
    hot = _run(base, "evaluate", "--dataset", "demo_nope", "--method", "bias", "--seed", "1", socket=path)
    assert hot.returncode == cold.returncode == 2
    assert hot.stderr == cold.stderr and hot.stderr.startswith("error: ") and hot.stderr.count("\n") == 1
    assert len(_handed(log)) == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_job_reaches_its_child_and_ends_the_job_as_it_ends_a_cold_one(
    base, server, tmp_path, signum
):
    path, _ = server
    ended = {}
    for name, sock in (("cold", None), ("hot", path)):
        ws = base.copy(tmp_path / name)
        mark = tmp_path / f"{name}.mark"
        proc = _popen(ws, *TRAIN, socket=sock, mark=mark)
        child = _held_pid(proc, mark)
        assert (child != proc.pid) == (sock is not None)  # warm: the job runs in the server's child
        proc.send_signal(signum)  # to the process the engine knows: the client
        _, err = proc.communicate(timeout=600)
        ended[name] = (proc.returncode, err.strip().splitlines()[-1:])  # SIGINT: "aborted", exit 130
        assert wait_for(lambda child=child: _gone(child), timeout=60)
    assert ended["hot"] == ended["cold"] and ended["hot"][0] != 0


def test_a_killed_child_fails_only_its_job_and_the_server_runs_the_next(base, server, tmp_path):
    path, log = server
    ws = base.copy(tmp_path / "ws")
    mark = tmp_path / "mark"
    proc = _popen(ws, *TRAIN, socket=path, mark=mark)
    os.kill(_held_pid(proc, mark), signal.SIGKILL)  # the job's child dies (an OOM kill, a segfault)
    proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL  # the engine sees the job die the same way
    rerun = _run(ws, *TRAIN, socket=path)  # same server: the job resumes from its checkpoint
    assert rerun.returncode == 0 and "resuming" in rerun.stdout + rerun.stderr
    assert len(_handed(log)) == 2


def test_a_dead_client_takes_its_child_down(base, server, tmp_path):
    path, _ = server
    ws = base.copy(tmp_path / "ws")
    mark = tmp_path / "mark"
    proc = _popen(ws, *TRAIN, socket=path, mark=mark)
    child = _held_pid(proc, mark)
    proc.kill()  # SIGKILL: no handler forwards anything — the server sees the connection close
    proc.communicate(timeout=60)
    assert wait_for(lambda: _gone(child), timeout=60)


def test_a_server_running_other_code_or_none_at_all_means_a_cold_run(base, server, tmp_path):
    path, log = server
    plugin = {
        "PROMPTBIAS_PLUGINS": "tests.toy_plugin",
        "PYTHONPATH": str(REPO),
    }  # other code than the server's
    stale = _run(base, "aggregate", socket=path, **plugin)
    cold = _run(base, "aggregate", socket=None, **plugin)
    assert (stale.returncode, stale.stdout, stale.stderr) == (cold.returncode, cold.stdout, cold.stderr)
    assert _handed(log) == [] and "stale (plugins differ)" in log.read_text()
    missing = _run(base, "aggregate", socket=str(tmp_path / "no.sock"))
    assert missing.returncode == 0, missing.stderr


def test_the_server_exits_once_its_owner_is_gone(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    path, proc = warm.start(owner=owner.pid, log=tmp_path / "warm.log")
    assert proc.poll() is None
    owner.communicate(b"")  # the owner ends (an engine killed with SIGKILL never runs its hooks)
    proc.wait(timeout=120)
    assert not Path(path).exists()


def test_the_fingerprint_names_the_code_a_child_would_run():
    fp = warm.fingerprint()
    assert fp["executable"] == sys.executable and Path(fp["package"], "warm.py").is_file()
    assert len(fp["sources"]) == 16


def test_only_the_stage_commands_go_warm():
    assert warm._command(["--params", "a.yaml", "--set", "x=1", "train", "--seed", "1"]) == "train"
    assert warm._command(["--help"]) is None
    for light in ("run", "dvc-yaml", "gpu-slot", "validate", "warm"):
        assert light not in warm.WARM_COMMANDS


def test_the_fingerprint_changes_with_the_sources(monkeypatch):
    """A server started before a code change must not run the changed code (its digest differs)."""
    import promptbias.identity

    before = warm.fingerprint()
    monkeypatch.setattr(promptbias.identity, "code", lambda: {"promptbias": "x", "sources": "0" * 16})
    assert warm.fingerprint()["sources"] != before["sources"]


def test_a_dead_server_takes_its_children_down_and_their_jobs_fail_in_one_line(base, tmp_path):
    path, proc = warm.start(owner=os.getpid(), log=tmp_path / "warm.log")
    ws = base.copy(tmp_path / "ws")
    mark = tmp_path / "mark"
    job = _popen(ws, *TRAIN, socket=path, mark=mark)
    child = _held_pid(job, mark)
    proc.kill()  # the server dies (OOM killer, a kill -9): no orphan may go on writing the job's files
    proc.wait()
    Path(path).unlink()  # (a killed server cannot remove its socket; a client finding it runs cold)
    _, err = job.communicate(timeout=120)
    assert wait_for(lambda: _gone(child), timeout=60)
    assert job.returncode == 1 and err.strip().splitlines() == [
        "error: the warm promptbias server stopped during this job — run it again"
    ]


def _pending(pid: int, signum: int) -> bool:
    """``signum`` is pending (sent, blocked, not yet delivered) in process ``pid`` (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    pending = int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)
    return bool(pending & (1 << (signum - 1)))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_sent_before_the_child_has_its_handlers_is_not_lost(base, server, tmp_path, signum):
    """The window between the fork and the child's own handlers (a child inherits the server's: SIGINT
    ignored, SIGTERM = stop the server): widest on a loaded box, where a Ctrl-C right after a job's start
    used to be lost and the job ran on. The gate (``PROMPTBIAS_WARM_GATE``) holds the child in that
    window; the signal must wait there, pending, and end the job once the child is ready."""
    path, _ = server
    gate = tmp_path / "gate"
    env = _env(**{warm.ENV: path, "PROMPTBIAS_WARM_GATE": str(gate)})  # (warm.GATE_ENV)
    proc = subprocess.Popen(
        _cmd(base, *TRAIN), cwd=base.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    _started.append((proc, gate))
    assert wait_for(gate.exists, proc), proc.communicate()
    child = int(gate.read_text())
    proc.send_signal(signum)  # to the client, which forwards it to the child
    assert wait_for(lambda: _pending(child, signum), proc, timeout=120)  # forwarded, held until ready
    (tmp_path / "gate.go").touch()
    proc.communicate(timeout=600)
    assert proc.returncode in (-signum, 128 + signum), proc.returncode  # ended by the signal, not run on
    assert wait_for(lambda: _gone(child), timeout=60)
    assert not (base.path / "runs/demo_shapes/bias/seed1/params.safetensors").exists()


def test_an_interrupt_reaches_a_warm_pretrain_demo_mid_loop(base, server, tmp_path):
    """pretrain-demo held at its second optimiser step in the warm child; a SIGINT to its client ends it
    as it ends a cold one: "aborted", exit 130, no weights written."""
    path, _ = server
    clip = tmp_path / "clip"
    args = (
        "--set", "demo.pretrain_steps=4", "--set", "demo.batch_size=8", "--set", "demo.warmup_steps=1",
        "--set", f"demo.clip_dir={clip}", "--set", "demo.eval_datasets=[demo_shapes]", "pretrain-demo",
    )  # fmt: skip
    ended = {}
    for name, sock in (("cold", None), ("hot", path)):
        mark = tmp_path / f"{name}.mark"
        proc = _popen(base, *args, socket=sock, mark=mark, fault=f"{clip}/pretrain.step2.:hold")
        child = _held_pid(proc, mark)
        assert (child != proc.pid) == (sock is not None)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=600)
        ended[name] = (proc.returncode, err.strip().splitlines()[-1:])
        assert wait_for(lambda child=child: _gone(child), timeout=60)
        assert not (clip / "open_clip_model.safetensors").exists()
    assert ended["hot"] == ended["cold"] == (130, ["aborted"])


_STUCK_IN_C = """
import ctypes, os, sys
from pathlib import Path
from promptbias.interrupts import interruptible
libc = ctypes.CDLL(None)
mutex = ctypes.create_string_buffer(64)  # all zeros: PTHREAD_MUTEX_INITIALIZER, a normal mutex
libc.pthread_mutex_lock(mutex)
with interruptible():
    Path(sys.argv[1]).write_text(str(os.getpid()))
    libc.pthread_mutex_lock(mutex)  # locked twice: blocks in C for good, as torch's backward does for a while
"""


def test_an_interrupt_ends_a_job_stuck_in_a_c_call(tmp_path):
    """The cause of a warm (or cold) pretrain-demo shrugging off a Ctrl-C on a loaded box: Python runs its
    SIGINT handler only between bytecodes, and one ``loss.backward()`` is a single C++ call that took up to
    a minute there. ``interruptible()`` ends the process from a watcher thread instead: "aborted", 130."""
    mark = tmp_path / "mark"
    proc = subprocess.Popen(
        [sys.executable, "-c", _STUCK_IN_C, str(mark)], env=_env(), stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    _started.append((proc, mark))
    assert wait_for(mark.exists, proc), proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)  # (a safety net: without the watcher it never ends)
    assert (proc.returncode, err.strip().splitlines()) == (130, ["aborted"])
