"""Cases 1 and 2 — kill -9 and SIGTERM (SLURM preemption) of a training job; every rerun resumes.

One training job (12 epochs) is interrupted seven times in a row, each rerun resuming from the last
checkpoint: SIGKILL mid-epoch at a named training step, SIGKILL right before the checkpoint / params /
train.json rename (the ``PROMPTBIAS_FAULT`` hook of ``promptbias.io``), SIGTERM both mid-epoch and during
the checkpoint write (exit 75, the status the SLURM profile's requeue/retries re-run), and finally a
SIGTERM while train.json is written, which must not fail the finished job. Every interruption happens at
a named point of the job, never after a timer, so the test does not depend on the machine's speed. After
every interruption every file under ``runs/`` and ``metrics/`` parses; at the end the learned parameters
are byte-identical to an uninterrupted run, train.json's history and the evaluation metrics equal it
(wall-clock fields aside), and DVCLive holds exactly one row per epoch.
"""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest
import yaml

from promptbias.train import PREEMPTED_EXIT_CODE
from tests.reliability.helpers import (
    assert_outputs_parse,
    popen_cli,
    sub_env,
    without_timing,
)
from tests.workspace import REPO, Workspace, strict_json

EPOCHS = 12
TRAIN = [
    "--set",
    f"train.epochs={EPOCHS}",
    "train",
    "--dataset",
    "demo_shapes",
    "--method",
    "bias",
    "--seed",
    "1",
]
EVALUATE = [
    *TRAIN[:2],
    "evaluate",
    "--dataset",
    "demo_shapes",
    "--method",
    "bias",
    "--seed",
    "1",
]  # same config
RUN = Path("runs/demo_shapes/bias/seed1")


def _epoch(ws: Workspace) -> int:
    """Epochs completed according to the checkpoint (0 when there is none)."""
    import torch

    ckpt = ws.path / RUN / "checkpoint.pt"
    if not ckpt.is_file():
        return 0
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"]) + 1


def _fault(ws: Workspace, spec: str) -> tuple[int, str]:
    proc = popen_cli(ws, sub_env(PROMPTBIAS_FAULT=spec), *TRAIN)
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out


def _mid_epoch(ws: Workspace, step: int, action: str) -> tuple[int, str]:
    """``action`` (kill | term) at training step ``step`` of the second epoch this process runs."""
    return _fault(ws, f"/epoch{_epoch(ws) + 2}.step{step}.:{action}")


@pytest.mark.slow
def test_kills_and_preemptions_resume_to_the_uninterrupted_result(base_ws: Workspace, tmp_path: Path) -> None:
    straight = base_ws.copy(tmp_path / "straight")
    straight.cli(*TRAIN)
    straight.cli(*EVALUATE)

    ws = base_ws.copy(tmp_path / "killed")
    log: list[str] = []

    def step(what: str, result: tuple[int, str], expect_rc: set[int]) -> None:
        rc, out = result
        log.append(f"{what}: rc={rc}, after epoch {_epoch(ws)}")
        assert rc in expect_rc, f"{what}: exit {rc}\n{out[-2000:]}"
        assert_outputs_parse(ws.path)  # no truncated or half-written output, whatever the moment
        assert not (ws.path / RUN / "train.json").exists() or rc == 0

    # 1. SIGKILL inside the very first checkpoint write (temp file complete, not yet renamed)
    step("kill in checkpoint write #1", _fault(ws, "checkpoint.pt:kill:1"), {-signal.SIGKILL})
    assert not (ws.path / RUN / "checkpoint.pt").exists()
    # 2. SIGTERM arriving during a checkpoint write: the write completes, then exit 75 for the requeue
    result = _fault(ws, "checkpoint.pt:term:1")
    step("SIGTERM in a checkpoint write", result, {PREEMPTED_EXIT_CODE})
    assert _epoch(ws) == 1 and "preempted" in result[1]
    # 3. SIGKILL mid-epoch (step 2 of the second epoch of this process): that epoch is lost
    before = _epoch(ws)
    step("kill mid-epoch", _mid_epoch(ws, 2, "kill"), {-signal.SIGKILL})
    assert _epoch(ws) == before + 1
    # 4. SIGKILL inside this process's second checkpoint write
    before = _epoch(ws)
    step("kill in checkpoint write #2", _fault(ws, "checkpoint.pt:kill:2"), {-signal.SIGKILL})
    assert _epoch(ws) == before + 1  # resumed, then one epoch checkpointed before the kill
    # 5. SIGTERM (preemption) mid-epoch: the last checkpoint kept, exit for requeue
    before = _epoch(ws)
    result = _mid_epoch(ws, 1, "term")
    step("SIGTERM mid-epoch", result, {PREEMPTED_EXIT_CODE})
    assert "preempted" in result[1] and "resuming" in result[1] and _epoch(ws) == before + 1
    assert _epoch(ws) < EPOCHS, "the job finished before the last interruptions; raise EPOCHS"
    # 6. SIGKILL while the learned parameters are renamed into place (all epochs done)
    step("kill in params write", _fault(ws, "params.safetensors:kill"), {-signal.SIGKILL})
    assert _epoch(ws) == EPOCHS and not (ws.path / RUN / "params.safetensors").exists()
    # 7. SIGKILL while train.json is renamed into place (params already written)
    step("kill in train.json write", _fault(ws, "train.json:kill"), {-signal.SIGKILL})
    assert (ws.path / RUN / "params.safetensors").exists() and not (ws.path / RUN / "train.json").exists()
    # the requeued / restarted job finishes, although a SIGTERM arrives while it writes train.json
    result = _fault(ws, "train.json:term")
    step("SIGTERM in the train.json write", result, {0})
    assert not (ws.path / RUN / "checkpoint.pt").exists()  # a finished job keeps no checkpoint
    ws.cli(*EVALUATE)
    print("\n" + "\n".join(log))

    assert not assert_outputs_parse(ws.path), "stale atomic temporaries left in the run folder"
    a, b = straight.path, ws.path
    assert (b / RUN / "params.safetensors").read_bytes() == (a / RUN / "params.safetensors").read_bytes()
    ta, tb = (json.loads((p / RUN / "train.json").read_text()) for p in (a, b))
    assert without_timing(tb["history"]) == without_timing(ta["history"])
    assert tb["status"] == ta["status"] == "ok" and tb["epochs_completed"] == EPOCHS
    metrics = "metrics/demo_shapes/bias/seed1"
    assert (b / f"{metrics}.json").read_bytes() == (a / f"{metrics}.json").read_bytes()  # results only
    sa, sb = (strict_json(p / f"{metrics}.per_class.json") for p in (a, b))
    assert without_timing(sb) == without_timing(sa)  # the sidecar also holds the evaluation's speed
    tsv = b / RUN / "dvclive/plots/metrics/train/loss.tsv"
    rows = list(csv.DictReader(tsv.read_text().splitlines(), delimiter="\t"))
    assert [int(r["step"]) for r in rows] == list(range(EPOCHS))
    assert [float(r["loss"]) for r in rows] == pytest.approx([h["loss"] for h in ta["history"]])


def test_slurm_profile_requeues_the_preempted_exit_status() -> None:
    """train exits 75 (EX_TEMPFAIL) on SIGTERM; the SLURM profile must run such a job again.

    SLURM itself requeues a preempted job (``slurm-requeue: true`` → ``sbatch --requeue``) whatever its
    exit status; a SIGTERM that SLURM does not follow with a requeue (e.g. ``scancel --signal=TERM``)
    leaves Snakemake a failed job, which ``retries`` runs again. Both paths resume from checkpoint.pt,
    which is not a declared output (neither engine deletes it when the job fails).
    """
    profile = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    assert PREEMPTED_EXIT_CODE == 75
    assert profile.get("slurm-requeue") is True
    assert int(profile.get("retries", 0)) >= 1
    assert profile.get("rerun-incomplete") is True
    from promptbias.pipeline import STAGE_BY_NAME

    train_outs = [o.path for o in STAGE_BY_NAME["train"].outs({})]
    assert not any(path.endswith("checkpoint.pt") for path in train_outs)
