"""Analytic checks of the probe definitions (DESIGN.md §6) on synthetic tensors and the tiny CLIP."""

from __future__ import annotations

import math

import pytest
import torch

from promptbias.methods import build_method
from promptbias.probes import ProbeContext, ProbeSettings
from promptbias.probes.attention_distance import (
    distance_matrix,
    mean_distance,
    patch_query_mass,
    uniform_distance,
)
from promptbias.probes.attention_entropy import mean_entropy, row_entropy
from promptbias.probes.bias_decomposition import ContributionStats, key_contribution
from promptbias.probes.common import capture_text, capture_vision, ctx_roles, eos_of, scaled_cosine
from promptbias.probes.relevancy import head_weighted, rollout


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is much faster than two on shared CPUs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _with_cls_and_prompts(patch_probs: torch.Tensor, P: int = 0) -> torch.Tensor:
    """Embed B×H×N×N patch attention into B×H×T×T (T = 1+N+P), CLS/prompt rows uniform."""
    B, H, N, _ = patch_probs.shape
    T = 1 + N + P
    a = torch.full((B, H, T, T), 1.0 / T)
    a[:, :, 1 : 1 + N, :] = 0
    a[:, :, 1 : 1 + N, 1 : 1 + N] = patch_probs
    return a


# -- attention distance ----------------------------------------------------------------------


def test_uniform_attention_on_14x14_grid_is_116_5_px():
    N = 196
    a = _with_cls_and_prompts(torch.full((1, 2, N, N), 1.0 / N))
    D = distance_matrix((14, 14), (16, 16))
    for renorm in (True, False):
        mad = mean_distance(a, N, D, renormalise=renorm)
        torch.testing.assert_close(mad, torch.full_like(mad, 116.5), atol=0.05, rtol=0)
    assert uniform_distance((14, 14), (16, 16)) == pytest.approx(116.5, abs=0.05)


def test_one_hot_self_attention_has_zero_distance():
    N = 16
    a = _with_cls_and_prompts(torch.eye(N).expand(2, 3, N, N), P=2)
    D = distance_matrix((4, 4), (8, 8))
    assert mean_distance(a, N, D, renormalise=True).abs().max() == 0
    assert mean_distance(a, N, D, renormalise=False).abs().max() == 0


def test_distance_variants_per_row_identity_and_masses():
    """W prompt (d_X = 0) = m_S · W/O prompt per query row; masses of CLS/prompts/patches sum to 1."""
    g = torch.Generator().manual_seed(0)
    N, P = 16, 3
    a = torch.randn(2, 4, 1 + N + P, 1 + N + P, generator=g).softmax(-1)
    D = distance_matrix((4, 4), (8, 8))
    one = torch.zeros_like(a)
    one[:, :, 1] = a[:, :, 1]  # only patch query 1 populated → mean over the N rows = row value / N
    m_s = a[:, :, 1, 1 : 1 + N].sum(-1)
    w = mean_distance(one, N, D, renormalise=False)
    wo_row = (a[:, :, 1, 1 : 1 + N] / m_s[..., None] * D[0]).sum(-1)
    torch.testing.assert_close(w * N, (m_s * wo_row).double(), atol=1e-6, rtol=0)
    masses = patch_query_mass(a, N)
    total = masses["mass_cls"] + masses["mass_prompts"] + masses["mass_patches"]
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-6, rtol=0)


# -- entropy ---------------------------------------------------------------------------------


def test_entropy_uniform_is_log_t_and_one_hot_is_zero():
    T = 11
    uniform = torch.full((2, 3, T, T), 1.0 / T)
    every = torch.ones(2, T, dtype=torch.bool)
    torch.testing.assert_close(
        mean_entropy(uniform, every), torch.full((2, 3), math.log(T), dtype=torch.float64)
    )
    onehot = torch.eye(T).expand(2, 3, T, T)
    assert mean_entropy(onehot, every).abs().max() == 0
    assert row_entropy(torch.tensor([0.0, 1.0])) == 0  # xlogy: 0·log 0 = 0


def test_entropy_text_uses_valid_rows_and_wo_prompt_renormalises():
    T, eos = 8, 4
    a = torch.tril(torch.ones(T, T))
    a = (a / a.sum(-1, keepdim=True)).expand(1, 1, T, T)  # causal uniform: row i has entropy log(i+1)
    pos = torch.arange(T)[None]
    valid = pos <= eos
    expected = sum(math.log(i + 1) for i in range(eos + 1)) / (eos + 1)
    assert float(mean_entropy(a, valid)) == pytest.approx(expected)
    keep = (pos == 0) | (pos > 2)  # prompt slots 1..2 removed and renormalised away
    eos_row = pos == eos
    assert float(mean_entropy(a, eos_row, keep)) == pytest.approx(math.log(eos + 1 - 2))


# -- relevancy -------------------------------------------------------------------------------


def _relevancy_inputs(tiny_clip, classnames, images, labels):
    method = build_method(
        "prompt",
        tiny_clip,
        classnames,
        "a photo of a {}.",
        n_ctx_text=2,
        n_ctx_vision=2,
        depth_text=2,
        depth_vision=2,
    )
    ctx = ProbeContext(tiny_clip, method, images, labels, [str(i) for i in range(len(labels))])
    tokens = method.tokens[labels]
    with torch.enable_grad():
        rec_v, img = capture_vision(ctx, images)
        rec_t, txt = capture_text(ctx, tokens)
        grads = torch.autograd.grad(scaled_cosine(ctx, img, txt).sum(), rec_v.probs + rec_t.probs)
    nv = len(rec_v.probs)
    return ctx, tokens, (rec_v.probs, list(grads[:nv])), (rec_t.probs, list(grads[nv:]))


def test_relevancy_start_layer_last_equals_that_layers_abar(tiny_clip, tiny_images, classnames):
    labels = torch.tensor([0, 3, 6])
    _, _, (pv, gv), (pt, gt) = _relevancy_inputs(tiny_clip, classnames, tiny_images, labels)
    for probs, grads in ((pv, gv), (pt, gt)):
        last = len(probs) - 1
        R = rollout(probs, grads, start_layer=last)
        abar = head_weighted(probs[last].detach(), grads[last])
        eye = torch.eye(R.shape[-1])
        torch.testing.assert_close(R, eye + abar, atol=1e-6, rtol=0)  # R = I + Ā·I
        torch.testing.assert_close(R[:, 0, 1:], abar[:, 0, 1:], atol=1e-7, rtol=0)
        assert abar.abs().sum() > 0


def test_text_relevancy_is_zero_after_eos(tiny_clip, tiny_images, classnames):
    labels = torch.tensor([2, 3, 4])  # short and long class names in one batch
    ctx, tokens, _, (pt, gt) = _relevancy_inputs(tiny_clip, classnames, tiny_images, labels)
    R = rollout(pt, gt, start_layer=0)
    eos = eos_of(ctx, tokens)
    assert len(set(eos.tolist())) > 1 and R.shape[-1] == int(eos.max()) + 1
    for b, e in enumerate(eos.tolist()):
        assert R[b, e, e + 1 :].abs().max() == 0 if e + 1 < R.shape[-1] else True
        assert R[b, e, :e].sum() > 0


def test_text_roles_of_captions(tiny_clip, classnames):
    method = build_method("prompt", tiny_clip, classnames, "x", n_ctx_text=2, depth_text=1, depth_vision=0)
    ctx = ProbeContext(tiny_clip, method, torch.zeros(0, 3, 32, 32, dtype=torch.uint8), torch.zeros(0), [])
    roles = ctx_roles(ctx)
    assert roles[2] == [
        "sos",
        "prompt",
        "prompt",
        "template",
        "template",
        "category",
        "period",
        "eos",
    ]  # banded
    zs = build_method("zeroshot", tiny_clip, ["cat", "dog"], "{} texture.")
    zroles = ctx_roles(ProbeContext(tiny_clip, zs, ctx.images, ctx.labels, []))
    assert zroles[0] == ["sos", "category", "template", "period", "eos"]


# -- bias decomposition ----------------------------------------------------------------------


def _synthetic(constant: bool) -> ContributionStats:
    g = torch.Generator().manual_seed(0)
    B, H, T, hd, P = 3, 2, 9, 4, 2
    W = H * hd
    logits = torch.randn(B, H, T, T - P, generator=g)
    a = torch.empty(B, H, T, T)
    a[..., : T - P] = logits.softmax(-1) * 0.7  # the rest varies freely per image and query
    a[..., T - P :] = torch.tensor([0.1, 0.2])  # same prompt attention for every query and image
    v = torch.randn(B, H, T, hd, generator=g)
    if constant:
        v[:, :, T - P :] = v[:1, :, T - P :]  # prompt values are input-independent
    w = torch.randn(W, W, generator=g)
    keys = torch.arange(T - P, T)
    c = key_contribution(a, v, w, keys)  # B×T×W
    u = key_contribution(a, v, w, torch.arange(T))
    queries = torch.arange(T)[None].expand(B, T) < T - P
    st = ContributionStats()
    st.add(
        c[queries],
        u[queries],
        torch.randn(int(queries.sum()), W, generator=g),
        a[..., keys].sum(-1).mean(1)[queries],
        B,
    )
    return st


def test_bias_decomposition_constant_prompt_term_explains_everything():
    s = _synthetic(constant=True).summary()
    assert s["explained_share"] == pytest.approx(1.0, abs=1e-12)
    assert s["residual_rms"] == pytest.approx(0.0, abs=1e-6)
    assert s["key_mass"] == pytest.approx(0.3)
    varying = _synthetic(constant=False).summary()
    assert 0 < varying["explained_share"] < 0.9


def test_key_contribution_of_all_keys_is_the_attention_output(tiny_clip, tiny_images):
    """Σ over all keys through out_proj (+ its bias) reproduces the block's attention output."""
    from promptbias.model.encoders import Recorder, encode_image

    rec = Recorder(keep_inputs=True, keep_values=True, track_grad=False)
    with torch.no_grad():
        encode_image(tiny_clip.model, tiny_images, attention="explicit", recorder=rec)
        blk = tiny_clip.model.visual.transformer.resblocks[0]
        y = blk.ln_1(rec.inputs[0])
        ref = blk.attn(y, y, y, need_weights=False)[0]
    a, v = rec.probs[0], rec.values[0]
    full = key_contribution(a, v, blk.attn.out_proj.weight, torch.arange(a.shape[-1]))
    torch.testing.assert_close(full.float() + blk.attn.out_proj.bias, ref, atol=1e-5, rtol=0)
    split = sum(
        key_contribution(a, v, blk.attn.out_proj.weight, torch.tensor([k])) for k in range(a.shape[-1])
    )
    torch.testing.assert_close(split, full, atol=1e-10, rtol=0)


def test_settings_from_config():
    s = ProbeSettings.from_config({"batch_size": 4, "start_layer": 1, "map_images": 2, "rotations": [0, 180]})
    assert (s.batch_size, s.start_layer, s.map_images, s.rotations) == (4, 1, 2, (0, 180))


def test_text_positions_average_the_papers_way_and_the_reached_way():
    """pos_<j> (norm): every caption counts, 0 at/after its EOS; norm_reached: only captions before EOS."""
    from promptbias.probes.common import Accumulator
    from promptbias.probes.relevancy import _text_readout

    L = 6
    R = torch.zeros(2, L, L)
    eos = torch.tensor([2, 4])
    R[0, 2, :3] = torch.tensor([1.0, 3.0, 5.0])  # caption 0: EOS at 2 → others = 1 + 3
    R[1, 4, :5] = torch.tensor([2.0, 2.0, 2.0, 2.0, 9.0])  # caption 1: EOS at 4 → others = 8
    masks = {g: torch.zeros(2, L, dtype=torch.bool) for g in ("sos", "prompt", "template", "category",
                                                               "period", "eos")}  # fmt: skip
    masks["sos"][:, 0] = True
    masks["template"][0, 1:2] = masks["template"][1, 1:4] = True  # the words: the group sums cover the row
    masks["eos"][0, 2] = masks["eos"][1, 4] = True
    acc = Accumulator()
    _text_readout(acc, R, eos, masks, n_ctx=0, last=4)
    got = {(v, k): (val, n) for (_, _, _, v, k, val, n) in acc.rows() if k.startswith("pos_")}
    # position 1: caption 0 has 3/4, caption 1 has 2/8 → both reach it
    assert got[("norm", "pos_1")] == (pytest.approx((0.75 + 0.25) / 2), 2)
    # position 3: caption 0 is past its EOS (counts as 0), caption 1 has 2/8
    assert got[("norm", "pos_3")] == (pytest.approx(0.25 / 2), 2)
    assert got[("norm_reached", "pos_3")] == (pytest.approx(0.25), 1)
    # position 4 is caption 1's EOS: 0 for everyone in the paper's average, nobody reaches it otherwise
    assert got[("norm", "pos_4")] == (0.0, 2) and ("norm_reached", "pos_4") not in got
    assert ("norm", "pos_5") not in got  # past every caption's EOS: not written
