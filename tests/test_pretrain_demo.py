"""``promptbias pretrain-demo`` end to end through the real CLI: a short run that learns and saves weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from promptbias.cli import cli
from promptbias.demo.pretrain import _augment, encode_text_truncated, tokenize_truncated
from promptbias.model import load_clip

REPO = Path(__file__).resolve().parents[1]


def test_truncated_text_matches_encode_text() -> None:
    clip = load_clip("promptbias-demo", None)
    texts = ["a photo of a red circle.", "a small blue star on a wavy background."]
    full = clip.model.encode_text(clip.tokenizer(texts))
    short = encode_text_truncated(clip.model, tokenize_truncated(clip.tokenizer, texts))
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)


def test_augment_keeps_shape_and_values() -> None:
    x = torch.rand(5, 3, 16, 16)
    y = _augment(x, torch.Generator().manual_seed(0), shift=2)
    assert y.shape == x.shape
    assert y.min() >= x.min() and y.max() <= x.max()


@pytest.mark.slow
def test_pretrain_demo_cli_short_run(tmp_path: Path) -> None:
    out = tmp_path / "demo_clip"
    args = [
        "--params",
        str(REPO / "params.yaml"),
        "--set",
        "demo.pretrain_steps=20",
        "--set",
        "demo.batch_size=32",
        "--set",
        "demo.warmup_steps=3",
        "--set",
        "demo.lr=0.001",
        "--set",
        f"demo.clip_dir={out}",
        "--set",
        "demo.eval_datasets=[demo_shapes]",
        "--set",
        "demo.probe_shots=4",
        "pretrain-demo",
    ]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    weights = out / "open_clip_model.safetensors"
    record = json.loads((out / "pretrain.json").read_text())
    assert weights.is_file() and not list(out.glob(".*tmp*"))
    assert record["steps"] == 20 and len(record["loss"]) == 20
    loss = record["loss"]
    assert sum(loss[-5:]) / 5 < sum(loss[:5]) / 5  # it learns
    assert record["images_per_second"] > 0 and record["corpus_size"] == 20 * 32
    ev = record["evaluation"]["demo_shapes"]
    assert 0 <= ev["zeroshot_accuracy"] <= 100 and ev["n_test"] == 400

    trained = load_clip("promptbias-demo", str(weights)).model.state_dict()
    torch.manual_seed(record["settings"]["pretrain_seed"])  # the very initialisation pretraining started from
    start = load_clip("promptbias-demo", None).model.state_dict()
    assert trained.keys() == start.keys()
    unchanged = sorted(k for k in start if torch.equal(trained[k], start[k]))
    assert not unchanged, f"pretraining left these tensors at their initial values: {unchanged}"
    assert float(trained["logit_scale"].exp()) <= 100.0 + 1e-4
