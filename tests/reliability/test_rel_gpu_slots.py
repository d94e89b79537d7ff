"""Case 6 — GPU slots through real processes: ``promptbias gpu-slot -- <cmd>`` (no CUDA needed).

Eight jobs compete for four fake GPUs (``CUDA_VISIBLE_DEVICES=0,1,2,3``); two of them are SIGKILLed
while they hold a slot. Every job must see exactly one GPU, no two jobs may hold the same GPU at the same
time, and the slots of the killed jobs must be free again (the remaining jobs all finish, and a
non-blocking claim succeeds afterwards).

Nothing here depends on timing. A job holds its slot until the test opens a gate file, so the test
knows which jobs hold slots and which wait. Exclusion is witnessed, not inferred from clocks: a holder
creates ``holding/<gpu>`` with O_EXCL on start (a second holder of that GPU fails to create it and exits
3) and removes it before it lets go of the slot.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.reliability.helpers import wait_for

JOB = r"""
import json, os, sys, time
from pathlib import Path
out, witness_dir, gate = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
cvd = os.environ["CUDA_VISIBLE_DEVICES"]
try:
    witness = os.open(witness_dir / cvd, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
except FileExistsError:
    sys.exit(3)  # another job holds this GPU right now
os.write(witness, str(os.getpid()).encode())
tmp = out.with_name(out.name + ".tmp")
tmp.write_text(json.dumps({"cvd": cvd, "pid": os.getpid()}))
os.replace(tmp, out.with_name(out.name + ".started"))
while not gate.exists():
    time.sleep(0.01)
os.unlink(witness_dir / cvd)
out.write_text(json.dumps({"cvd": cvd}))
"""


def _env(visible: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_JOB_ID", "PROMPTBIAS_GPU_SLOT")}
    env.update(CUDA_VISIBLE_DEVICES=visible, OMP_NUM_THREADS="1")
    return env


def _slot_job(lock_dir: Path, out: Path, gate: Path, visible: str) -> subprocess.Popen[str]:
    witness = out.parent / "holding"
    witness.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "promptbias.cli", "gpu-slot", "--lock-dir", str(lock_dir), "--"]
    argv += [sys.executable, "-c", JOB, str(out), str(witness), str(gate)]
    err = open(out.with_name(out.name + ".stderr"), "w")  # noqa: SIM115 — the child owns it
    return subprocess.Popen(argv, env=_env(visible), stdout=subprocess.DEVNULL, stderr=err, text=True)


def _claim_now(lock_dir: Path, visible: str) -> str:
    code = f"from promptbias.devices import claim_gpu_slot as c; print(c({str(lock_dir)!r}, wait=False))"
    res = subprocess.run(
        [sys.executable, "-c", code], env=_env(visible), capture_output=True, text=True, check=True
    )
    return res.stdout.strip()


def _started(tmp: Path, jobs: range) -> dict[int, dict]:
    """Job → its start record, for the jobs that have started (got a slot)."""
    markers = {i: tmp / f"job{i}.json.started" for i in jobs}
    return {i: json.loads(m.read_text()) for i, m in markers.items() if m.exists()}


def _waiting(tmp: Path, names) -> int:
    """How many of the jobs said that every slot is busy (claim_gpu_slot's line before it waits)."""
    stems = [f"job{n}" if isinstance(n, int) else n for n in names]
    return sum("slots busy" in (tmp / f"{stem}.json.stderr").read_text() for stem in stems)


def test_eight_jobs_four_slots_never_share_and_killed_slots_free_up(tmp_path: Path) -> None:
    locks, gate = tmp_path / "locks", tmp_path / "gate"
    jobs = [_slot_job(locks, tmp_path / f"job{i}.json", gate, "0,1,2,3") for i in range(8)]
    try:
        # four jobs get the four GPUs and hold them; the other four wait for a slot (they say so)
        assert wait_for(lambda: len(_started(tmp_path, range(8))) == 4, timeout=300)
        assert wait_for(lambda: _waiting(tmp_path, range(8)) == 4, timeout=300)
        first = _started(tmp_path, range(8))
        assert sorted(r["cvd"] for r in first.values()) == ["0", "1", "2", "3"]  # one GPU each
        # SIGKILL two holders (gpu-slot exec'd the job: its pid holds the lock); their witnesses stay
        # behind, so the test removes them once the process is gone
        victims = sorted(first)[:2]
        for i in victims:
            os.kill(jobs[i].pid, signal.SIGKILL)
            assert jobs[i].wait(timeout=60) == -signal.SIGKILL
            (tmp_path / "holding" / first[i]["cvd"]).unlink()
        # two waiting jobs take exactly the killed jobs' GPUs (the other two are still held)
        assert wait_for(lambda: len(_started(tmp_path, range(8))) == 6, timeout=300)
        second = {i: r for i, r in _started(tmp_path, range(8)).items() if i not in first}
        assert sorted(r["cvd"] for r in second.values()) == sorted(first[i]["cvd"] for i in victims)
        gate.touch()  # let every job finish: the last two take slots as the others let go
        for i, proc in enumerate(jobs):
            rc = proc.wait(timeout=300)
            err = (tmp_path / f"job{i}.json.stderr").read_text()
            assert rc == (-signal.SIGKILL if i in victims else 0), (i, rc, err)  # 3: a GPU was shared
    finally:
        gate.touch()
        for proc in jobs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for i in set(range(8)) - set(victims):
        assert json.loads((tmp_path / f"job{i}.json").read_text())["cvd"] in {"0", "1", "2", "3"}
    assert _claim_now(locks, "0,1,2,3") == "0"  # every slot is free again


def test_slot_of_a_killed_job_is_free_again(tmp_path: Path) -> None:
    locks, gate = tmp_path / "locks", tmp_path / "gate"
    holder = _slot_job(locks, tmp_path / "holder.json", gate, "7")
    waiter = None
    try:
        assert wait_for((tmp_path / "holder.json.started").exists, holder, timeout=300)
        assert _claim_now(locks, "7") == "None"  # taken
        waiter = _slot_job(locks, tmp_path / "waiter.json", gate, "7")
        assert wait_for(lambda: _waiting(tmp_path, ["waiter"]) == 1, waiter, timeout=300)  # it waits...
        assert not (tmp_path / "waiter.json.started").exists()  # ...and has not started
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        (tmp_path / "holding" / "7").unlink()
        gate.touch()
        assert waiter.wait(timeout=300) == 0  # the waiter got the slot once the holder died
    finally:
        gate.touch()
        for proc in (holder, waiter):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert json.loads((tmp_path / "waiter.json").read_text())["cvd"] == "7"
    assert _claim_now(locks, "7") == "0"
