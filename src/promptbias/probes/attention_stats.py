"""Attention statistics (paper Fig. 4): where the pooled token's attention goes, per layer and head.

    shares = group_shares(probs, row=eos, masks)   # B×H per group for one layer
    result = PROBES["attention_stats"].run(ctx)

Vision: the CLS row of every layer's attention split into cls (self) / patches / prompts, averaged over
the image sample. Text: the EOS row (EOS by the model's pooling rule) split into sos / prompt /
template / category / period / eos, averaged over all class captions (each once). Both for the method
(variants ``cls_row`` / ``eos_row``) and for the same inputs through the prompt- and bias-free backbone
(``clip_cls_row`` / ``clip_eos_row``; for text the same token ids, prompt slots then hold their words).
"""

from __future__ import annotations

import torch

from promptbias.probes.common import (
    TEXT_GROUPS,
    Accumulator,
    ProbeContext,
    ProbeResult,
    capture_text,
    capture_vision,
    ctx_roles,
    eos_of,
    role_masks,
    text_chunks,
)
from promptbias.probes.registry import register_probe


def row_shares(rows: torch.Tensor, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """rows: B×H×T (one query row per sample); masks: group → B×T bool. Returns group → B×H."""
    return {g: (rows * m[:, None, :].to(rows.dtype)).sum(-1) for g, m in masks.items()}


def vision_masks(B: int, T: int, n_patches: int, device: torch.device) -> dict[str, torch.Tensor]:
    pos = torch.arange(T, device=device)
    groups = {"cls": pos == 0, "patches": (pos >= 1) & (pos <= n_patches), "prompts": pos > n_patches}
    return {g: m.expand(B, T) for g, m in groups.items()}


def _vision(acc: Accumulator, ctx: ProbeContext, baseline: bool) -> None:
    variant = "clip_cls_row" if baseline else "cls_row"
    for batch in ctx.batches():
        with torch.no_grad():
            rec, _ = capture_vision(ctx, batch.images, baseline=baseline)
        for layer, a in enumerate(rec.probs):  # B×H×T×T
            B, _H, T, _ = a.shape
            shares = row_shares(a[:, :, 0, :], vision_masks(B, T, ctx.n_patches, a.device))
            for g, v in shares.items():
                acc.add_head_row(layer, "vision", variant, g, v)


def _text(acc: Accumulator, ctx: ProbeContext, baseline: bool) -> None:
    variant = "clip_eos_row" if baseline else "eos_row"
    roles = ctx_roles(ctx)
    for idx, tokens in text_chunks(ctx):
        with torch.no_grad():
            rec, _ = capture_text(ctx, tokens, baseline=baseline)
        eos = eos_of(ctx, tokens)
        for layer, a in enumerate(rec.probs):  # C×H×L×L
            C, _H, L, _ = a.shape
            rows = a[torch.arange(C, device=a.device), :, eos, :]  # C×H×L
            masks = {g: m.to(a.device) for g, m in role_masks(roles, idx.cpu(), L).items()}
            for g, v in row_shares(rows, masks).items():
                acc.add_head_row(layer, "text", variant, g, v)


@register_probe("attention_stats")
def attention_stats(ctx: ProbeContext) -> ProbeResult:
    """Share of CLS (vision) / EOS (text) attention on each token group, per layer and head."""
    acc = Accumulator()
    for baseline in (False, True):
        _vision(acc, ctx, baseline)
        _text(acc, ctx, baseline)
    conventions = {
        "vision": "CLS query row (row 0) of each layer's softmax; groups cls (self), patches [1:1+N], "
        "prompts [1+N:]; mean over the image sample (n = images)",
        "text": "EOS query row (EOS from the tokens by the model's pooling rule); groups "
        f"{', '.join(TEXT_GROUPS)}; mean over all class captions, each once (n = classes)",
        "text_groups": "sos = position 0; prompt = slots 1..n_ctx_text; category = class-name tokens; "
        "period = '.' tokens outside the class name; template = the other words; eos = the pooled token",
        "variants": {
            "cls_row/eos_row": "the method's forward (prompts and biases as trained)",
            "clip_cls_row/clip_eos_row": "the same images / token ids through the frozen backbone without "
            "prompts or biases (the zero-shot-equivalent forward)",
        },
        "head": "0..H-1 per head; -1 = mean over heads",
        "value": "attention share (the groups of one row sum to 1)",
    }
    return ProbeResult(acc, conventions)
