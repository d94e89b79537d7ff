"""Attention entropy per layer and head (paper Fig. 5, bottom; Clark et al. 2019 §3.3).

    H = row_entropy(p)                                       # −Σ_j xlogy(p_ij, p_ij), nats
    h = mean_entropy(probs, queries, keys=None)              # B×H, mean over the selected query rows
    result = PROBES["attention_entropy"].run(ctx)

Vision: ``all_rows`` = mean over every query row (CLS, patches, prompts) of the full softmax (the
paper's "W Prompt"), ``cls_row`` = row 0 only. ``wo_prompt_*``: prompt keys removed and each row
renormalised over the remaining keys, prompt query rows dropped ("W/O Prompt"). ``clip_*``: the same
images through the prompt- and bias-free backbone. Text: the same over valid rows only (0..EOS; padding
rows excluded), with ``eos_row`` instead of ``cls_row`` and prompt slots 1..n_ctx as the prompts; mean over
all class captions. Without prompts the wo_prompt variants equal the plain ones.
"""

from __future__ import annotations

import math

import torch

from promptbias.probes.common import (
    Accumulator,
    ProbeContext,
    ProbeResult,
    capture_text,
    capture_vision,
    eos_of,
    text_chunks,
)
from promptbias.probes.registry import register_probe

EPS = 1e-30


def row_entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row over the last dim, with 0·log 0 = 0."""
    return -torch.special.xlogy(p, p).sum(-1)


def mean_entropy(
    probs: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor | None = None
) -> torch.Tensor:
    """probs B×H×T×T; queries B×T bool (rows averaged); keys B×T bool (renormalise over them) → B×H."""
    p = probs.double()
    if keys is not None:
        p = p * keys[:, None, None, :].to(p.dtype)
        p = p / p.sum(-1, keepdim=True).clamp_min(EPS)
    h = row_entropy(p)  # B×H×T
    q = queries[:, None, :].to(h.dtype)
    return (h * q).sum(-1) / q.sum(-1).clamp_min(1)


def _vision(acc: Accumulator, ctx: ProbeContext, baseline: bool) -> None:
    prefix = "clip_" if baseline else ""
    for batch in ctx.batches():
        with torch.no_grad():
            rec, _ = capture_vision(ctx, batch.images, baseline=baseline)
        for layer, a in enumerate(rec.probs):  # B×H×T×T
            B, _, T, _ = a.shape
            pos = torch.arange(T, device=a.device).expand(B, T)
            every, cls = torch.ones_like(pos, dtype=torch.bool), pos == 0
            acc.add_head_row(layer, "vision", f"{prefix}all_rows", "entropy", mean_entropy(a, every))
            acc.add_head_row(layer, "vision", f"{prefix}cls_row", "entropy", mean_entropy(a, cls))
            if not baseline:
                spatial = pos <= ctx.n_patches  # CLS + patches: the non-prompt tokens
                acc.add_head_row(
                    layer, "vision", "wo_prompt_all_rows", "entropy", mean_entropy(a, spatial, spatial)
                )
                acc.add_head_row(
                    layer, "vision", "wo_prompt_cls_row", "entropy", mean_entropy(a, cls, spatial)
                )
    if baseline:
        acc.add_set("vision", "reference", "log_T_no_prompts", -1, -1, math.log(1 + ctx.n_patches), 1)


def _text(acc: Accumulator, ctx: ProbeContext, baseline: bool) -> None:
    prefix = "clip_" if baseline else ""
    n_ctx = ctx.method.n_ctx_text
    for _, tokens in text_chunks(ctx):
        with torch.no_grad():
            rec, _ = capture_text(ctx, tokens, baseline=baseline)
        eos = eos_of(ctx, tokens)
        for layer, a in enumerate(rec.probs):  # C×H×L×L
            C, _, L, _ = a.shape
            pos = torch.arange(L, device=a.device).expand(C, L)
            valid, eos_row = pos <= eos[:, None], pos == eos[:, None]
            acc.add_head_row(layer, "text", f"{prefix}all_rows", "entropy", mean_entropy(a, valid))
            acc.add_head_row(layer, "text", f"{prefix}eos_row", "entropy", mean_entropy(a, eos_row))
            if not baseline:
                keep = (pos == 0) | (pos > n_ctx)  # every position but the prompt slots
                acc.add_head_row(
                    layer, "text", "wo_prompt_all_rows", "entropy", mean_entropy(a, valid & keep, keep)
                )
                acc.add_head_row(
                    layer, "text", "wo_prompt_eos_row", "entropy", mean_entropy(a, eos_row, keep)
                )


@register_probe("attention_entropy")
def attention_entropy(ctx: ProbeContext) -> ProbeResult:
    """Mean row entropy and CLS-/EOS-row entropy per layer/head, with and without prompts, and for CLIP."""
    acc = Accumulator()
    for baseline in (False, True):
        _vision(acc, ctx, baseline)
        _text(acc, ctx, baseline)
    conventions = {
        "entropy": "-sum_j xlogy(p_ij, p_ij) in nats (0 log 0 = 0, no smoothing), float64",
        "vision_rows": "all_rows = mean over all T query rows (CLS, patches, prompts); cls_row = row 0",
        "text_rows": "valid rows only: 0..EOS (EOS by the model's pooling rule); eos_row = the EOS row",
        "wo_prompt": "prompt keys removed and rows renormalised over the remaining keys; prompt query rows "
        "dropped (vision prompts = [1+N:], text prompts = slots 1..n_ctx_text); equals the plain variant "
        "when the branch has no prompts",
        "clip": "clip_* = the same images / token ids through the prompt- and bias-free backbone",
        "aggregation": "per sample mean over the selected rows, per head; mean over images (vision) or over "
        "all class captions (text)",
        "reference": "log_T_no_prompts = log(1+N), the entropy of uniform attention over CLS+patches",
        "head": "0..H-1 per head; -1 = mean over heads",
    }
    return ProbeResult(acc, conventions)
