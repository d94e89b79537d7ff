"""Every probe runs on the registry; zero prompts / zero bias give exactly plain CLIP's probe values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from promptbias.methods import build_method
from promptbias.probes import PROBES, ProbeContext, ProbeSettings, run_probe
from promptbias.probes.common import TABLE_COLUMNS

KEY = ["branch", "layer", "head", "variant", "key"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def _ctx(clip, method, n: int = 5, batch_size: int = 2) -> ProbeContext:
    labels = torch.arange(n) % len(method.classnames)
    settings = ProbeSettings(batch_size=batch_size, map_images=2, rotations=(0, 90))
    return ProbeContext(
        clip, method, _images(n, clip.image_size), labels, [f"im{i}.png" for i in range(n)], settings
    )


def _frame(kind: str, ctx: ProbeContext, name: str) -> tuple[pd.DataFrame, dict]:
    result = run_probe(kind, ctx)
    return result.table.frame("toy", name, 1, kind), (result.arrays or {})


@pytest.mark.parametrize("kind", sorted(PROBES))
def test_zero_prompts_and_zero_bias_equal_plain_clip(tiny_clip, classnames, kind):
    plain = build_method("zeroshot", tiny_clip, classnames, "a photo of a {}.")
    zero_bias = build_method("bias", tiny_clip, classnames, "ignored", depth_text=2, depth_vision=2)
    no_prompt = build_method("prompt", tiny_clip, classnames, "ignored", depth_text=0, depth_vision=0)
    ref, ref_arrays = _frame(kind, _ctx(tiny_clip, plain), "zeroshot")
    assert list(ref.columns) == list(TABLE_COLUMNS) and len(ref) > 0
    assert np.isfinite(ref["value"]).all()
    for name, method in (("bias", zero_bias), ("prompt", no_prompt)):
        got, arrays = _frame(kind, _ctx(tiny_clip, method), name)
        learned = got["variant"].isin(["learned_bias", "learned_prompt"])
        assert (got.loc[learned, "value"] == 0).all()  # zero-initialised bias vectors
        merged = ref.merge(got[~learned], on=KEY, how="outer", suffixes=("_ref", "_got"), indicator=True)
        assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"].head()
        np.testing.assert_allclose(
            merged["value_got"], merged["value_ref"], atol=1e-5, rtol=1e-5, err_msg=f"{kind}/{name}"
        )
        assert (merged["n_got"] == merged["n_ref"]).all()
        for key, arr in ref_arrays.items():
            if arr.dtype.kind == "f":
                np.testing.assert_allclose(arrays[key], arr, atol=1e-5, rtol=1e-5)


def test_baseline_variants_equal_method_variants_for_plain_clip(tiny_clip, classnames):
    plain = build_method("zeroshot", tiny_clip, classnames, "a photo of a {}.")
    ctx = _ctx(tiny_clip, plain)
    pairs = {
        "attention_distance": [("clip", "wo_prompt"), ("clip_full", "w_prompt")],
        "attention_entropy": [
            ("clip_all_rows", "all_rows"),
            ("clip_all_rows", "wo_prompt_all_rows"),
            ("clip_eos_row", "eos_row"),
        ],
        "attention_stats": [("clip_cls_row", "cls_row"), ("clip_eos_row", "eos_row")],
    }
    for kind, variants in pairs.items():
        df, _ = _frame(kind, ctx, "zeroshot")
        for a, b in variants:
            x = df[df.variant == a].set_index(["branch", "layer", "head", "key"])["value"].sort_index()
            y = df[df.variant == b].set_index(["branch", "layer", "head", "key"])["value"].sort_index()
            assert len(x) > 0
            pd.testing.assert_series_equal(x, y, check_names=False, atol=1e-6, rtol=0)


def test_prompted_probes_have_prompt_rows_and_valid_shares(tiny_clip, classnames):
    method = build_method(
        "prompt", tiny_clip, classnames, "x", n_ctx_text=2, n_ctx_vision=3, depth_text=2, depth_vision=2
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(torch.randn_like(p))  # "trained": prompts far from init
    ctx = _ctx(tiny_clip, method)
    rel, _ = _frame("relevancy", ctx, "prompt")
    norm = rel[(rel.variant == "norm") & rel.key.isin(["patches", "prompts"]) & (rel.branch == "vision")]
    assert norm.value.sum() == pytest.approx(1.0) and (norm.value > 0).all()
    text = rel[(rel.variant == "norm_with_self") & (rel.branch == "text")]
    assert text.value.sum() == pytest.approx(1.0)
    assert {"ctx_1", "ctx_2"} <= set(rel.key)
    stats, _ = _frame("attention_stats", ctx, "prompt")
    sums = stats[stats["head"] >= 0].groupby(["branch", "variant", "layer", "head"]).value.sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-6)
    dec, _arrays = _frame("bias_decomposition", ctx, "prompt")
    share = dec[(dec.key == "explained_share")]
    assert set(share.variant) >= {"prompt_tokens", "prompt_cls", "sos_tokens", "prompt_eos"}
    assert ((share.value >= 0) & (share.value <= 1 + 1e-9)).all()
    _, maps = _frame("maps", ctx, "prompt")
    assert maps["prompt_similarity"].shape == (2, 2, 2, 3, 4, 4)  # n×R×L×P×G×G
    sim = maps["prompt_similarity"].reshape(-1, 16)
    np.testing.assert_allclose(sim.max(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(sim.min(-1), 0.0, atol=1e-6)
    assert list(maps["image_ids"]) == ["im0.png", "im1.png"]


@pytest.mark.slow
def test_every_probe_runs_on_random_vitb16_for_one_batch(vitb16, classnames):
    method = build_method(
        "prompt", vitb16, classnames, "x", n_ctx_text=1, n_ctx_vision=2, depth_text=12, depth_vision=12
    )
    ctx = _ctx(vitb16, method, n=2, batch_size=2)
    ctx.settings.map_images = 1
    for kind in sorted(PROBES):
        df, _arrays = _frame(kind, ctx, "prompt")
        assert len(df) > 0 and np.isfinite(df["value"].dropna()).all(), kind
        assert set(df.layer) - {-1} <= set(range(12))
    mad = _frame("attention_distance", ctx, "prompt")[0]
    ref = mad[mad.variant == "reference"].value.item()
    assert ref == pytest.approx(116.5, abs=0.05)
