"""Training and evaluation: the paper's schedule, determinism, resume after a kill, divergence, metrics."""

from __future__ import annotations

import json
import math
import re
import signal
from pathlib import Path

import pytest
import torch

from promptbias.aggregate import mean_std_ci, optimal, summarise
from promptbias.evaluate import accuracy_report
from promptbias.train import Schedule, epoch_generator
from tests.workspace import Workspace, strict_json

TRAIN_BIAS = ("train", "--dataset", "demo_shapes", "--method", "bias", "--seed", "1")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return Workspace.create(tmp_path_factory.mktemp("ws") / "base", datasets=["demo_shapes"])


def _metrics(ws: Workspace, method: str, seed: int = 1) -> dict:
    return strict_json(ws.path / "metrics" / "demo_shapes" / method / f"seed{seed}.json")


def test_schedule_matches_the_reference_formula():
    sched = Schedule(lr=0.0025, epochs=10, warmup_epochs=1, warmup_lr=1e-5)
    assert sched(0) == 1e-5
    for e in range(1, 10):
        assert sched(e) == pytest.approx(0.0025 * 0.5 * (1 + math.cos(math.pi * (e - 1) / 10)), rel=1e-12)
    assert sched(1) == pytest.approx(0.0025)
    # the reference's IVLP 2+2 example: η=0.0035, T=5 → 1e-5, 3.50e-3, 3.17e-3, 2.29e-3, 1.21e-3
    ivlp = Schedule(lr=0.0035, epochs=5)
    assert [round(ivlp(e), 5) for e in range(5)] == [0.00001, 0.0035, 0.00317, 0.00229, 0.00121]


def test_each_epoch_draws_its_own_order_and_a_resumed_epoch_draws_it_again():
    def order(seed: int, epoch: int) -> list[int]:
        return torch.randperm(64, generator=epoch_generator(seed, epoch)).tolist()

    epochs = [order(1, e) for e in range(4)]
    assert len({tuple(o) for o in epochs}) == 4  # a new shuffle (and augmentation stream) each epoch
    assert order(1, 2) == epochs[2]  # from (seed, epoch) alone: a resumed epoch sees the same batches
    assert order(2, 0) != epochs[0]  # and seeds differ


def test_accuracy_report_micro_macro_per_class():
    preds = torch.tensor([0, 0, 1, 1, 2, 0])
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    rep = accuracy_report(preds, labels, n_classes=4)
    assert rep["accuracy"] == pytest.approx(100 * 4 / 6)
    assert rep["per_class"] == [pytest.approx(100.0), pytest.approx(100.0), pytest.approx(100 / 3), None]
    assert rep["macro_accuracy"] == pytest.approx((100 + 100 + 100 / 3) / 3)


def test_mean_std_ci():
    mean, std, ci = mean_std_ci([70.0, 72.0, 74.0])
    assert mean == 72.0 and std == pytest.approx(math.sqrt(8 / 3))
    assert ci == pytest.approx(4.303 * 2.0 / math.sqrt(3))
    assert math.isnan(mean_std_ci([50.0])[2])


def test_optimal_is_selected_on_validation_and_reported_beside_test_selected():
    records = [
        {
            "dataset": "d",
            "method": "prompt",
            "seed": 1,
            "accuracy": 70,
            "macro_accuracy": 70,
            "val_accuracy": 80,
        },
        {
            "dataset": "d",
            "method": "prompt-d3-n4",
            "seed": 1,
            "accuracy": 75,
            "macro_accuracy": 75,
            "val_accuracy": 60,
        },
        {
            "dataset": "d",
            "method": "bias",
            "seed": 1,
            "accuracy": 99,
            "macro_accuracy": 99,
            "val_accuracy": 99,
        },
    ]
    best = optimal(summarise(records))["d"]
    assert best["val_selected"] == "prompt" and best["val_selected_accuracy_mean"] == 70
    assert best["test_selected"] == "prompt-d3-n4" and best["test_selected_accuracy_mean"] == 75


def test_train_evaluate_same_seed_gives_identical_metrics(workspace, tmp_path):
    a = workspace.copy(tmp_path / "a")
    b = workspace.copy(tmp_path / "b")
    for ws in (a, b):
        out = ws.cli("train", "--dataset", "demo_shapes", "--method", "prompt", "--seed", "1")
        ws.cli("evaluate", "--dataset", "demo_shapes", "--method", "prompt", "--seed", "1")
    ma, mb = _metrics(a, "prompt"), _metrics(b, "prompt")
    assert ma == mb and "eval_images_per_second" not in ma  # results only: no timing in a DVC metric
    metric = "metrics/demo_shapes/prompt/seed1.json"
    assert (a.path / metric).read_bytes() == (b.path / metric).read_bytes()  # the same bytes: a clean diff
    pa = (a.path / "runs/demo_shapes/prompt/seed1/params.safetensors").read_bytes()
    assert pa == (b.path / "runs/demo_shapes/prompt/seed1/params.safetensors").read_bytes()
    train = json.loads((a.path / "runs/demo_shapes/prompt/seed1/train.json").read_text())
    assert train["status"] == "ok" and train["epochs_completed"] == 3
    progress = re.findall(
        r"demo_shapes/prompt/seed1 epoch (\d)/3: lr (\S+), loss (\S+), train acc .*ETA \d\d:\d\d:\d\d", out
    )
    assert [(int(e), float(lr), float(loss)) for e, lr, loss in progress] == [
        (h["epoch"], pytest.approx(h["lr"], rel=1e-2), pytest.approx(h["loss"], abs=1e-4))
        for h in train["history"]
    ]  # one line per epoch, as it ends
    assert [h["lr"] for h in train["history"]] == [pytest.approx(Schedule(0.01, 3)(e)) for e in range(3)]
    assert train["parameters"] == 2 * (64 + 64)
    assert train["job"] == "train-demo_shapes-prompt-s1" and train["provenance"]["versions"]["torch"]
    assert (
        train["params"]["methods.prompt"]["lr"] == 0.01 == train["identity"]["params"]["methods.prompt"]["lr"]
    )
    assert (a.path / "runs/demo_shapes/prompt/seed1/dvclive").is_dir()
    for key in ("accuracy", "macro_accuracy", "val_accuracy", "n_test", "status"):
        assert key in ma
    per_class = strict_json(a.path / "metrics/demo_shapes/prompt/seed1.per_class.json")
    assert len(per_class["accuracy"]) == ma["n_classes"] and per_class["eval_images_per_second"] > 0


def test_kill_after_an_epoch_then_resume_matches_uninterrupted(workspace, tmp_path):
    straight = workspace.copy(tmp_path / "straight")  # same process kind and thread count as the resumed run
    done = straight.run("--set", "train.epochs=4", *TRAIN_BIAS)
    assert done.returncode == 0, done.stderr
    killed = workspace.copy(tmp_path / "killed")
    # SIGKILL right before the second checkpoint's rename: epoch 1 is saved, epoch 2 is lost
    # (a tiny run finishes all epochs in milliseconds, so an external kill would race it)
    proc = killed.popen(
        "--set",
        "train.epochs=4",
        *TRAIN_BIAS,
        fault="checkpoint.pt:kill:2",
    )
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    ckpt = killed.path / "runs/demo_shapes/bias/seed1/checkpoint.pt"
    assert torch.load(ckpt, weights_only=True)["epoch"] == 0
    assert not (killed.path / "runs/demo_shapes/bias/seed1/params.safetensors").exists()
    resumed = killed.run("--set", "train.epochs=4", *TRAIN_BIAS)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    run = "runs/demo_shapes/bias/seed1/"
    assert (killed.path / run / "params.safetensors").read_bytes() == (
        straight.path / run / "params.safetensors"
    ).read_bytes()
    h_killed = json.loads((killed.path / run / "train.json").read_text())["history"]
    h_straight = json.loads((straight.path / run / "train.json").read_text())["history"]
    assert [h["loss"] for h in h_killed] == [h["loss"] for h in h_straight]


def test_sigterm_checkpoints_and_exits_for_requeue(workspace, tmp_path):
    ws = workspace.copy(tmp_path / "term")
    # SIGTERM arrives while the second checkpoint is being written (the preemption signal of SLURM):
    # that checkpoint completes, the job stops before epoch 3 and asks to be requeued
    proc = ws.popen("--set", "train.epochs=4", *TRAIN_BIAS, fault="checkpoint.pt:term:2")
    run = ws.path / "runs/demo_shapes/bias/seed1"
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, out
    assert f"preempted: checkpointed {Path('runs/demo_shapes/bias/seed1')} after epoch 2" in out
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and len(json.loads(state["history"])) == 2
    assert not (run / "params.safetensors").exists() and not (run / "train.json").exists()
    resumed = ws.run("--set", "train.epochs=4", *TRAIN_BIAS)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming runs/demo_shapes/bias/seed1 after epoch 2/4" in resumed.stderr
    train = json.loads((run / "train.json").read_text())
    assert [h["epoch"] for h in train["history"]] == [1, 2, 3, 4]


def test_non_finite_loss_is_recorded_as_diverged(workspace, tmp_path):
    ws = workspace.copy(tmp_path / "nan")
    out = ws.cli(
        "--set",
        "methods.prompt.lr=1e38",
        "train",
        "--dataset",
        "demo_shapes",
        "--method",
        "prompt",
        "--seed",
        "1",
    )
    assert "diverged" in out
    train = json.loads((ws.path / "runs/demo_shapes/prompt/seed1/train.json").read_text())
    assert train["status"] == "diverged"
    # evaluated under the config it was trained with (another lr is refused: item 9 of the provenance issue)
    ws.cli(
        "--set",
        "methods.prompt.lr=1e38",
        "evaluate",
        "--dataset",
        "demo_shapes",
        "--method",
        "prompt",
        "--seed",
        "1",
    )
    assert _metrics(ws, "prompt")["status"] == "diverged"


def test_zeroshot_needs_no_training_and_evaluates(workspace, tmp_path):
    ws = workspace.copy(tmp_path / "zs")
    result = ws.run("train", "--dataset", "demo_shapes", "--method", "zeroshot", "--seed", "1")
    assert result.returncode == 2 and "zeroshot needs no training" in result.stderr
    ws.cli("evaluate", "--dataset", "demo_shapes", "--method", "zeroshot", "--seed", "1")
    m = _metrics(ws, "zeroshot")
    assert m["n_test"] > 0 and 0 <= m["accuracy"] <= 100


def test_evaluate_without_training_says_what_to_run(workspace, tmp_path):
    ws = workspace.copy(tmp_path / "untrained")
    result = ws.run("evaluate", "--dataset", "demo_shapes", "--method", "bias", "--seed", "1")
    assert result.returncode == 2
    assert "promptbias train --dataset demo_shapes --method bias --seed 1" in result.stderr


def test_training_curves_are_dvc_plots(workspace, tmp_path):
    import subprocess
    import sys
    from pathlib import Path as _Path

    ws = workspace.copy(tmp_path / "plots")
    ws.cli("dvc-yaml")
    ws.cli(*TRAIN_BIAS)
    run = ws.path / "runs/demo_shapes/bias/seed1"
    history = json.loads((run / "train.json").read_text())["history"]
    rows = (run / "curve.csv").read_text().splitlines()
    assert rows[0] == "epoch,lr,loss,accuracy" and len(rows) == 1 + len(history) == 4
    assert [float(r.split(",")[2]) for r in rows[1:]] == [h["loss"] for h in history]
    dvc = str(_Path(sys.executable).parent / "dvc")
    res = subprocess.run(
        [dvc, "plots", "show", "--json"], cwd=ws.path, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-2000:]
    shown = json.loads(res.stdout)["data"]
    curves = {
        name for name in shown if not name.endswith(".png")
    }  # (the figures: image plots, not drawn here)
    assert curves == {"train-loss-demo_shapes", "train-accuracy-demo_shapes"}  # one plot per dataset
    values = shown["train-loss-demo_shapes"][0]["content"]["data"]["values"]
    assert [
        (int(v["epoch"]), float(v["loss"])) for v in values if v["filename"] == "bias/seed1/curve.csv"
    ] == [
        (h["epoch"], h["loss"]) for h in history
    ]  # (the prompt run is declared too; not trained here, DVC reports it missing)


def test_base_to_novel_trains_on_base_classes_and_evaluates_those_tensors_on_novel(workspace, tmp_path):
    """CoCoOp's protocol through the commands: the base view trains into its own run folder; the novel
    view scores the same tensors on the other half of the classes with their names; novel never trains."""
    from promptbias import protocols

    ws = workspace.copy(tmp_path / "b2n")
    split = strict_json(ws.path / "data/raw/demo_shapes.json")
    n = len(split["classnames"])
    ws.cli("train", "--dataset", "demo_shapes-base", "--method", "bias", "--seed", "1")
    run = ws.path / "runs/demo_shapes-base/bias/seed1"
    assert (run / "params.safetensors").is_file() and not (ws.path / "runs/demo_shapes").exists()
    record = strict_json(run / "train.json")
    assert record["job"] == "train-demo_shapes-base-bias-s1"
    assert record["train_images"] == 4 * -(-n // 2)  # 4 shots of each base class
    refused = ws.run("train", "--dataset", "demo_shapes-novel", "--method", "bias", "--seed", "1")
    assert refused.returncode == 2 and "train `--dataset demo_shapes-base`" in refused.stderr
    for view, classes in (("base", -(-n // 2)), ("novel", n // 2)):
        ws.cli("evaluate", "--dataset", f"demo_shapes-{view}", "--method", "bias", "--seed", "1")
        m = strict_json(ws.path / f"metrics/demo_shapes-{view}/bias/seed1.json")
        test = protocols.apply_view(split, view)["test"]
        assert m["n_classes"] == classes and m["n_test"] == len(test) > 0
        side = strict_json(ws.path / f"metrics/demo_shapes-{view}/bias/seed1.per_class.json")
        assert side["evaluated"]["job"] == "train-demo_shapes-base-bias-s1"  # the base view's tensors
        assert side["classnames"] == protocols.apply_view(split, view)["classnames"]


def test_cross_dataset_evaluates_the_sources_tensors_with_the_targets_classes(workspace, tmp_path):
    ws = workspace.copy(tmp_path / "xd")
    ws.cli("fetch", "demo_aerial")
    ws.cli("split", "demo_aerial", "--shots", "4", "--seed", "1")
    ws.cli(*TRAIN_BIAS)  # the source's few-shot run: all its classes
    refused = ws.run("train", "--dataset", "demo_aerial-from_demo_shapes", "--method", "bias", "--seed", "1")
    assert refused.returncode == 2 and "train `--dataset demo_shapes`" in refused.stderr
    ws.cli("evaluate", "--dataset", "demo_aerial-from_demo_shapes", "--method", "bias", "--seed", "1")
    target = strict_json(ws.path / "data/raw/demo_aerial.json")
    m = strict_json(ws.path / "metrics/demo_aerial-from_demo_shapes/bias/seed1.json")
    assert m["n_classes"] == len(target["classnames"]) and m["n_test"] == len(target["test"])
    side = strict_json(ws.path / "metrics/demo_aerial-from_demo_shapes/bias/seed1.per_class.json")
    assert (
        side["evaluated"]["job"] == "train-demo_shapes-bias-s1" and side["classnames"] == target["classnames"]
    )
    assert not (ws.path / "runs/demo_aerial-from_demo_shapes").exists()


def test_domain_generalisation_evaluates_the_sources_tensors_on_a_test_only_variant(workspace, tmp_path):
    from tests.test_data_domain_shifts import _write_subset

    ws = workspace.copy(tmp_path / "dg")
    _write_subset("imagenet-r", ws.path / "DATA" / "imagenet-rendition")  # 3 of 6 classes, 3 images each
    ws.cli("fetch", "imagenet_r", "--from", str(ws.path / "DATA"))
    ws.cli("cache", "imagenet_r")
    # the source's few-shot run (the pipeline's DG source is imagenet; the command takes any source)
    ws.cli(*TRAIN_BIAS)
    refused = ws.run("train", "--dataset", "imagenet_r", "--method", "bias", "--seed", "1")
    assert (
        refused.returncode == 2 and "imagenet_r: test-only (ImageNet-R has no train images)" in refused.stderr
    )
    target = strict_json(ws.path / "data/raw/imagenet_r.json")
    view = "imagenet_r-from_demo_shapes"
    for method in ("bias", "zeroshot"):
        ws.cli("evaluate", "--dataset", view, "--method", method, "--seed", "1")
        m = strict_json(ws.path / f"metrics/{view}/{method}/seed1.json")
        assert (m["n_classes"], m["n_test"], m["n_val"]) == (3, len(target["test"]), 0) == (3, 9, 0)
        assert m["val_accuracy"] is None and 0 <= m["accuracy"] <= 100  # no val: null, not NaN
        side = strict_json(ws.path / f"metrics/{view}/{method}/seed1.per_class.json")
        assert side["classnames"] == target["classnames"] == ["goldfish", "great white shark", "electric ray"]
        assert side["job"] == f"evaluate-{view}-{method}-s1"
    side = strict_json(ws.path / f"metrics/{view}/bias/seed1.per_class.json")
    assert side["evaluated"]["job"] == "train-demo_shapes-bias-s1"  # the source's run, with its split digests
    assert set(side["evaluated"]["inputs"]) >= {"raw_split", "fewshot_split"}
    assert not (ws.path / "runs/imagenet_r").exists() and not (ws.path / f"runs/{view}").exists()
    assert not (ws.path / "data/splits/imagenet_r").exists()
