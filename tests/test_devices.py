"""GPU slots: concurrent jobs never share a GPU; a killed job's slot is free again (fake GPUs, no CUDA)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from promptbias import devices

HOLDER = r"""
import json, os, sys, time
from pathlib import Path
from promptbias.devices import claim_gpu_slot
lock_dir, out, hold = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
slot = claim_gpu_slot(lock_dir, poll_s=0.05)
start = time.monotonic()
print("claimed", slot, flush=True)
time.sleep(hold)
out.write_text(json.dumps({"slot": slot, "cvd": os.environ["CUDA_VISIBLE_DEVICES"], "start": start, "end": time.monotonic()}))
"""


def _env(visible: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_JOB_ID", devices.SLOT_ENV)}
    env["CUDA_VISIBLE_DEVICES"] = visible
    return env


def test_eight_jobs_on_four_slots_never_share(tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(tmp_path / "locks"), str(tmp_path / f"job{i}.json"), "0.6"],
            env=_env("0,1,2,3"),
            stdout=subprocess.DEVNULL,
        )
        for i in range(8)
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    runs = [json.loads((tmp_path / f"job{i}.json").read_text()) for i in range(8)]
    assert {r["slot"] for r in runs} <= {0, 1, 2, 3}
    for r in runs:
        assert r["cvd"] == str(r["slot"])  # each job sees exactly its GPU
    for a in runs:
        for b in runs:
            if a is not b and a["slot"] == b["slot"]:
                assert a["end"] <= b["start"] or b["end"] <= a["start"], "two jobs held one GPU at once"


def test_slot_of_a_killed_process_is_free_again(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path), str(tmp_path / "never.json"), "60"],
        env=_env("7"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().split() == ["claimed", "0"]
        busy = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from promptbias.devices import claim_gpu_slot as c; print(c({str(tmp_path)!r}, wait=False))",
            ],
            env=_env("7"),
            capture_output=True,
            text=True,
            check=True,
        )
        assert busy.stdout.strip() == "None"  # taken
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    free = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from promptbias.devices import claim_gpu_slot as c; print(c({str(tmp_path)!r}, wait=False))",
        ],
        env=_env("7"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert free.stdout.strip() == "0"


def test_cpu_only_machine_gets_none(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv(devices.SLOT_ENV, raising=False)
    assert devices.claim_gpu_slot(tmp_path) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert devices.visible_gpus() == []


def test_uuid_entries_and_gpu_slot_command(tmp_path):
    env = _env("GPU-aaaa,GPU-bbbb")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "promptbias.cli",
            "gpu-slot",
            "--lock-dir",
            str(tmp_path),
            "--",
            sys.executable,
            "-c",
            "import os; print(os.environ['CUDA_VISIBLE_DEVICES'], os.environ['PROMPTBIAS_GPU_SLOT'])",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert res.stdout.split() == ["GPU-aaaa", "0:GPU-aaaa"]
    assert (Path(tmp_path) / "gpu-GPU-aaaa.lock").exists()


@pytest.mark.parametrize("slurm", ["12345"])
def test_slurm_assigns_the_gpu(tmp_path, monkeypatch, slurm):
    monkeypatch.setenv("SLURM_JOB_ID", slurm)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.delenv(devices.SLOT_ENV, raising=False)
    monkeypatch.setattr(devices, "_held", None)
    assert devices.claim_gpu_slot(tmp_path) == 0
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3" and not list(tmp_path.iterdir())
