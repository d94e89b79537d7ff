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
from tests.reliability.helpers import wait_for

HOLDER = r"""
import json, os, sys, time
from pathlib import Path
from promptbias.devices import claim_gpu_slot
lock_dir, out, hold = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
slot = claim_gpu_slot(lock_dir, poll_s=0.05)
witness = out.parent / f"holding-{slot}"
try:  # exclusion is witnessed: a second holder of this slot cannot create the file
    os.close(os.open(witness, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
except FileExistsError:
    sys.exit(3)
out.with_name(out.name + ".claimed").touch()
time.sleep(hold)
os.unlink(witness)
out.write_text(json.dumps({"slot": slot, "cvd": os.environ["CUDA_VISIBLE_DEVICES"]}))
"""


def _env(visible: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_JOB_ID", devices.SLOT_ENV)}
    env["CUDA_VISIBLE_DEVICES"] = visible
    return env


def _claim_now(lock_dir: Path, visible: str) -> str:
    code = f"from promptbias.devices import claim_gpu_slot as c; print(c({str(lock_dir)!r}, wait=False))"
    res = subprocess.run(
        [sys.executable, "-c", code], env=_env(visible), capture_output=True, text=True, check=True
    )
    return res.stdout.strip()


def test_eight_jobs_on_four_slots_never_share(tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(tmp_path / "locks"), str(tmp_path / f"job{i}.json"), "0.3"],
            env=_env("0,1,2,3"),
            stdout=subprocess.DEVNULL,
        )
        for i in range(8)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0] * 8  # 3: two holders of one slot at once
    runs = [json.loads((tmp_path / f"job{i}.json").read_text()) for i in range(8)]
    assert {r["slot"] for r in runs} <= {0, 1, 2, 3}
    for r in runs:
        assert r["cvd"] == str(r["slot"])  # each job sees exactly its GPU


def test_slot_of_a_killed_process_is_free_again(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path), str(tmp_path / "never.json"), "600"],
        env=_env("7"),
        stdout=subprocess.DEVNULL,
    )
    try:
        assert wait_for((tmp_path / "never.json.claimed").exists, proc, timeout=300)
        assert _claim_now(tmp_path, "7") == "None"  # taken
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _claim_now(tmp_path, "7") == "0"


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
