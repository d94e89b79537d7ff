"""Case 6 — GPU slots through real processes: ``promptbias gpu-slot -- <cmd>`` (no CUDA needed).

Eight jobs compete for four fake GPUs (``CUDA_VISIBLE_DEVICES=0,1,2,3``); two of them are SIGKILLed
while they hold a slot. Every job must see exactly one GPU, no two jobs may hold the same GPU at the same
time, and the slots of the killed jobs must be free again (the remaining jobs all finish, and a
non-blocking claim succeeds afterwards).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.reliability.helpers import wait_for

JOB = r"""
import json, os, sys, time
out, hold = sys.argv[1], float(sys.argv[2])
start = time.monotonic()
with open(out + ".started", "w") as fh:
    json.dump({"cvd": os.environ["CUDA_VISIBLE_DEVICES"], "start": start, "pid": os.getpid()}, fh)
time.sleep(hold)
with open(out, "w") as fh:
    json.dump({"cvd": os.environ["CUDA_VISIBLE_DEVICES"], "start": start, "end": time.monotonic()}, fh)
"""


def _env(visible: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_JOB_ID", "PROMPTBIAS_GPU_SLOT")}
    env.update(CUDA_VISIBLE_DEVICES=visible, OMP_NUM_THREADS="1")
    return env


def _slot_job(lock_dir: Path, out: Path, hold: float, visible: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "promptbias.cli", "gpu-slot", "--lock-dir", str(lock_dir), "--"]
    argv += [sys.executable, "-c", JOB, str(out), str(hold)]
    return subprocess.Popen(
        argv, env=_env(visible), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _claim_now(lock_dir: Path, visible: str) -> str:
    code = f"from promptbias.devices import claim_gpu_slot as c; print(c({str(lock_dir)!r}, wait=False))"
    res = subprocess.run(
        [sys.executable, "-c", code], env=_env(visible), capture_output=True, text=True, check=True
    )
    return res.stdout.strip()


def test_eight_jobs_four_slots_never_share_and_killed_slots_free_up(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    jobs = [_slot_job(locks, tmp_path / f"job{i}.json", 1.0, "0,1,2,3") for i in range(8)]
    started = [tmp_path / f"job{i}.json.started" for i in range(8)]
    # kill the first two jobs that get a slot, while they hold it
    victims: dict[int, float] = {}  # job → when it was killed
    assert wait_for(lambda: sum(p.exists() for p in started) >= 2, timeout=120)
    for i, marker in enumerate(started):
        if marker.exists() and len(victims) < 2:
            os.kill(jobs[i].pid, signal.SIGKILL)  # gpu-slot exec'd the job: this pid holds the lock
            jobs[i].wait(timeout=60)
            victims[i] = time.monotonic()
    for i, proc in enumerate(jobs):
        rc = proc.wait(timeout=300)
        assert rc == (-signal.SIGKILL if i in victims else 0), (i, rc, proc.stderr.read())

    spans = []
    for i in range(8):
        if i in victims:  # a killed job held its slot from its start until it died
            rec = json.loads(started[i].read_text())
            spans.append((rec["cvd"], rec["start"], victims[i]))
        else:
            rec = json.loads((tmp_path / f"job{i}.json").read_text())
            spans.append((rec["cvd"], rec["start"], rec["end"]))
    assert all(cvd in {"0", "1", "2", "3"} for cvd, _, _ in spans)  # exactly one GPU each
    for i, (cvd_a, start_a, end_a) in enumerate(spans):
        for cvd_b, start_b, end_b in spans[i + 1 :]:
            if cvd_a == cvd_b:
                assert min(end_a, end_b) <= max(start_a, start_b), f"two jobs held GPU {cvd_a} at once"
    killed_gpus = {spans[i][0] for i in victims}
    reused = [s for j, s in enumerate(spans) if j not in victims and s[0] in killed_gpus]
    assert any(start > victims[i] for i in victims for cvd, start, _ in reused if cvd == spans[i][0])
    assert _claim_now(locks, "0,1,2,3") == "0"  # every slot is free again


def test_slot_of_a_killed_job_is_free_again(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    holder = _slot_job(locks, tmp_path / "holder.json", 60.0, "7")
    try:
        assert wait_for((tmp_path / "holder.json.started").exists, holder, timeout=120)
        assert _claim_now(locks, "7") == "None"  # taken
        waiter = _slot_job(locks, tmp_path / "waiter.json", 0.0, "7")
        time.sleep(0.5)
        assert waiter.poll() is None and not (tmp_path / "waiter.json.started").exists()  # waits for it
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert waiter.wait(timeout=120) == 0  # the waiter got the slot once the holder died
    assert json.loads((tmp_path / "waiter.json").read_text())["cvd"] == "7"
    assert _claim_now(locks, "7") == "0"
