"""Zero-shot test-image features are computed once per dataset and shared by the seeds, exactly."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from promptbias import evaluate
from tests.workspace import Workspace, strict_json


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from safetensors.torch import save_file

    from promptbias.model import load_clip

    root = tmp_path_factory.mktemp("memo")
    torch.manual_seed(0)
    weights = root / "tiny.safetensors"  # a fixed weights file: memoising needs pretrained weights
    save_file(
        {k: v.contiguous() for k, v in load_clip("promptbias-tiny", None).model.state_dict().items()}, weights
    )
    return Workspace.create(
        root / "ws", datasets=["demo_shapes"], seeds=[1, 2], overrides={"model": {"pretrained": str(weights)}}
    ), weights


def _per_class(ws: Workspace, method: str, seed: int) -> list:
    return strict_json(ws.path / f"metrics/demo_shapes/{method}/seed{seed}.per_class.json")["accuracy"]


def _no_test_set(real):
    """Wrap ``evaluate.image_features``: the seed's small val split may run, the test split must not."""

    def wrapped(method, clip, pictures, *args, **kwargs):
        if len(pictures) > 100:  # the test split (400 images); val is 4 per class
            raise AssertionError("the image tower ran on the test set although its features are memoised")
        return real(method, clip, pictures, *args, **kwargs)

    return wrapped


def test_seeds_share_the_zero_shot_features_and_get_identical_results(workspace, monkeypatch):
    ws, weights = workspace
    ws.cli("evaluate", "--dataset", "demo_shapes", "--method", "zeroshot", "--seed", "1")
    memos = list((ws.path / "data/features/demo_shapes").glob("*.safetensors"))
    assert len(memos) == 1
    fresh = _per_class(ws, "zeroshot", 1)

    monkeypatch.setattr(evaluate, "image_features", _no_test_set(evaluate.image_features))
    ws.cli("evaluate", "--dataset", "demo_shapes", "--method", "zeroshot", "--seed", "2")  # a hit
    assert _per_class(ws, "zeroshot", 2) == fresh

    os.utime(weights, ns=(0, 0))  # the same bytes under another mtime: the same key, still a hit
    ws.cli("evaluate", "--dataset", "demo_shapes", "--method", "zeroshot", "--seed", "2")
    assert _per_class(ws, "zeroshot", 2) == fresh
    state = load_file(weights)  # other weights (same path, size and mtime) → other key → the tower runs
    state["logit_scale"] = state["logit_scale"] + 0.5
    stat = weights.stat()
    save_file(state, weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_size == stat.st_size
    with pytest.raises(AssertionError, match="image tower ran"):
        ws.cli("evaluate", "--dataset", "demo_shapes", "--method", "zeroshot", "--seed", "2")


def test_memoised_predictions_equal_recomputed_ones(workspace):
    from promptbias.data import images
    from promptbias.methods import build_method
    from promptbias.model import load_clip

    ws, weights = workspace
    clip = load_clip("promptbias-tiny", str(weights))
    split = json.loads((ws.path / "data/raw/demo_shapes/split_demo_shapes.json").read_text())
    x, _ = images.load_eval_images(
        ws.path / "data", "demo_shapes", split["test"], clip.image_size, cache=False
    )
    method = build_method("zeroshot", clip, ["red circle", "blue circle", "green star"], "a photo of a {}.")
    feats = evaluate.image_features(method, clip, x, 7, "fp32")  # N×E
    assert feats.shape[0] == len(x)
    direct = evaluate.predict(method, clip, x, 7, "fp32")
    assert torch.equal(evaluate.predict(method, clip, x, 7, "fp32", features=feats.clone()), direct)


def test_trained_vision_tensors_are_never_memoised(workspace):
    from promptbias.methods import build_method
    from promptbias.model import load_clip

    _, weights = workspace
    clip = load_clip("promptbias-tiny", str(weights))
    assert build_method("zeroshot", clip, ["a"], "{}.").vision_is_constant
    assert not build_method("bias", clip, ["a"], "{}.", depth_text=1, depth_vision=1).vision_is_constant
    from promptbias.frozen_features import memo_key

    cfg = {"model": {"name": "promptbias-tiny", "pretrained": None}, "train": {}, "data": {"root": "data"}}
    assert memo_key(cfg, clip, "demo_shapes", ["a.png"]) is None  # random init depends on the seed
