"""The CI-sized demo DAG through ``workflow/profiles/slurm`` on a real one-node SLURM, with a requeue.

The Table 1 part of the demo (``metrics``: fetch, split, pretrain-demo, train, evaluate, aggregate; one
seed, two epochs) runs once locally and once through the project's SLURM profile. In the SLURM run one
training job is made to stop at the first step of its second epoch (the ``hold`` fault: epoch 1 is
checkpointed) and is then requeued with ``scontrol requeue``: SLURM restarts it, it resumes from the
checkpoint, and the DAG completes. Every trained tensor file is byte-identical to the local run and every
metric equal (wall-clock fields aside). Every sbatch line asks for no GPU (``device: cpu``): the node has
none, so a profile that asked for one would fail here. Runs where the machine allows it (root, Debian's
packages: CI); skipped with the reason elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.slurm import SlurmCluster, Unavailable, job_id_of, processes_under
from tests.reliability.helpers import wait_for, without_timing
from tests.workflow_helpers import job_env, project_copy

pytestmark = pytest.mark.slow

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
DEMO = ["--configfile", "config/demo.yaml", "config/demo-fast.yaml"]
SIZES = "config/cluster-ci.yaml"  # the one place a user sets account, partitions and sizes
OVERLAY = """\
# tests/cluster: job sizes that fit the one-node test cluster (a layered file overrides key by key)
slurm:
  mem_mb: {default: 1500, cache: 1500, train: 1500, evaluate: 1500, probe: 1500}
"""
HELD = "demo_shapes/bias/seed1/epoch2.step1."  # the first step of epoch 2 of this training job


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        with SlurmCluster(tmp_path_factory.mktemp("slurm")) as running:
            yield running
    except Unavailable as exc:
        pytest.skip(f"no test SLURM cluster on this machine: {exc}")


def _results(root: Path) -> dict[str, object]:
    """Every trained tensor file (bytes) and metrics file (without wall-clock fields) under ``root``."""
    out: dict[str, object] = {}
    for path in sorted((root / "runs").rglob("params.safetensors")):
        out[str(path.relative_to(root))] = path.read_bytes()
    for path in sorted((root / "metrics").rglob("*.json")):
        out[str(path.relative_to(root))] = without_timing(json.loads(path.read_text()))
    return out


def test_demo_dag_on_slurm_survives_a_requeue_and_matches_a_local_run(cluster, tmp_path):
    local = project_copy(tmp_path / "local")
    res = subprocess.run(
        [SNAKEMAKE, "metrics", *DEMO, "--cores", "2", "--resources", "gpu=0"],
        cwd=local, env=job_env(), capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]

    proj = project_copy(tmp_path / "slurm")
    (proj / SIZES).write_text(OVERLAY)
    mark, log = tmp_path / "held", tmp_path / "snakemake-slurm.log"
    argv = [SNAKEMAKE, "metrics", "--profile", "workflow/profiles/slurm", *DEMO, SIZES]
    argv += ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1"]
    argv += ["--jobs", "2", "--latency-wait", "5", "--verbose"]
    env = job_env(
        PROMPTBIAS_FAULT=f"{HELD}:hold", PROMPTBIAS_FAULT_MARK=str(mark)
    )  # --export=ALL: jobs see it
    try:
        with log.open("w") as out:
            proc = subprocess.Popen(argv, cwd=proj, env=env, stdout=out, stderr=subprocess.STDOUT)
            try:
                assert wait_for(mark.exists, proc, timeout=1200), log.read_text()[-3000:]
                job = job_id_of(int(mark.read_text()))
                cluster.requeue(job)  # SLURM kills the job and restarts its batch script
                rc = proc.wait(timeout=1800)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        text = log.read_text()
        assert rc == 0, text[-4000:]
        assert cluster.job(job)["Restarts"] == "1"
        train_log = (proj / "logs/train/demo_shapes/bias/seed1.log").read_text()
        assert "resuming runs/demo_shapes/bias/seed1 after epoch 1/2" in train_log, train_log[-2000:]

        calls = re.findall(r"sbatch call: (sbatch .*)", text)
        assert len(calls) == len(re.findall(r"has been submitted with SLURM jobid", text)) > 0
        for call in calls:  # device: cpu — no job asks for a GPU; the sizes come from the layered file
            assert "--gpus" not in call and "--gres" not in call, call
            assert "--mem 1500" in call and re.search(r" -t \d+", call), call
        train_calls = [c for c in calls if "rule_train" in c]
        assert train_calls and all("--cpus-per-task=1" in c for c in train_calls)

        slurm_results, local_results = _results(proj), _results(local)
        assert slurm_results.keys() == local_results.keys() and len(slurm_results) > 10
        for key, value in local_results.items():
            assert slurm_results[key] == value, f"{key} differs between the SLURM and the local run"
    finally:
        leftovers = processes_under(tmp_path)  # an orphaned job step (proctrack/linuxproc) after a requeue
        for pid in leftovers:
            os.kill(pid, 9)
    assert wait_for(lambda: not processes_under(tmp_path), timeout=30)


def test_gpu_stages_ask_slurm_for_a_gpu_when_the_config_runs_on_cuda(cluster, tmp_path):
    proj = project_copy(tmp_path / "gpu")
    (proj / SIZES).write_text(OVERLAY)
    res = subprocess.run(
        [SNAKEMAKE, "runs/demo_clip/open_clip_model.safetensors", "--profile", "workflow/profiles/slurm",
         *DEMO, SIZES, "--config", "device=cuda", "--slurm-status-command", "squeue", "--jobs", "1",
         "--retries", "0", "--verbose"],
        cwd=proj, env=job_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    text = res.stdout + res.stderr
    calls = re.findall(r"sbatch call: (sbatch .*)", text)
    assert len(calls) == 1 and "--comment rule_pretrain_demo" in calls[0], text[-3000:]
    assert "--gpus=1" in calls[0] and "--ntasks" not in calls[0]  # one GPU; SLURM picks it
    # the test node has no GPU: sbatch refuses the job, and the run fails
    assert res.returncode != 0 and "Invalid generic resource (gres) specification" in text, text[-3000:]
