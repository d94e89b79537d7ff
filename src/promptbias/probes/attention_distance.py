"""Mean attention distance in pixels per layer and head over patch queries (paper Fig. 5, top).

    D = distance_matrix((14, 14), (16, 16))              # N×N pixels between patch centres
    mad = mean_distance(probs, n_patches=196, D=D, renormalise=True)   # B×H for one layer
    result = PROBES["attention_distance"].run(ctx)

Tokens: CLS = 0, patches 1..N in row-major grid order (open_clip flattens conv1's G×G output), prompts
N+1.. (appended). Only patch queries i ∈ S are averaged (CLS and prompts have no position).

* ``wo_prompt`` (and ``clip`` for the prompt-free backbone): Ã_ij = A_ij / Σ_{j'∈S} A_ij' over patch keys
  (CLS and prompts removed and the row renormalised), MAD = mean_i Σ_{j∈S} Ã_ij D_ij.
* ``w_prompt`` (and ``clip_full``): the full softmax row, non-spatial keys (CLS, prompts) at distance
  d_X = 0, MAD = mean_i Σ_{j∈S} A_ij D_ij; plus the mean mass of patch queries on CLS / prompts / patches.
Uniform attention over 14×14 patches of 16 px gives ≈ 116.5 px (``reference`` row ``uniform_px``).
"""

from __future__ import annotations

import torch

from promptbias.probes.common import Accumulator, ProbeContext, ProbeResult, capture_vision
from promptbias.probes.registry import register_probe

EPS = 1e-12


def distance_matrix(grid: tuple[int, int], patch: tuple[int, int], device=None) -> torch.Tensor:
    """Euclidean distance in pixels between patch centres, row-major order. N×N."""
    gh, gw = grid
    r = torch.arange(gh, device=device).repeat_interleave(gw).double() * patch[0]
    c = torch.arange(gw, device=device).repeat(gh).double() * patch[1]
    return torch.sqrt((r[:, None] - r[None, :]) ** 2 + (c[:, None] - c[None, :]) ** 2)


def mean_distance(probs: torch.Tensor, n_patches: int, D: torch.Tensor, renormalise: bool) -> torch.Tensor:
    """Mean attention distance over patch queries. probs B×H×T×T → B×H (pixels)."""
    a = probs[:, :, 1 : 1 + n_patches, 1 : 1 + n_patches].double()  # B×H×N×N, patch queries → patch keys
    if renormalise:
        a = a / a.sum(-1, keepdim=True).clamp_min(EPS)
    return (a * D.to(a.device)).sum(-1).mean(-1)


def patch_query_mass(probs: torch.Tensor, n_patches: int) -> dict[str, torch.Tensor]:
    """Mean over patch queries of the attention mass on CLS / prompts / patches. Each B×H."""
    rows = probs[:, :, 1 : 1 + n_patches, :].double()  # B×H×N×T
    return {
        "mass_cls": rows[..., 0].mean(-1),
        "mass_prompts": rows[..., 1 + n_patches :].sum(-1).mean(-1),
        "mass_patches": rows[..., 1 : 1 + n_patches].sum(-1).mean(-1),
    }


def uniform_distance(grid: tuple[int, int], patch: tuple[int, int]) -> float:
    """MAD of uniform attention over all patches (the 'global' reference line)."""
    return float(distance_matrix(grid, patch).mean())


@register_probe("attention_distance")
def attention_distance(ctx: ProbeContext) -> ProbeResult:
    """Mean attention distance (px) per layer/head: clip / clip_full / wo_prompt / w_prompt, plus masses."""
    acc = Accumulator()
    N = ctx.n_patches
    D = distance_matrix(ctx.grid, ctx.patch, device=ctx.device)
    for baseline, (renorm_name, full_name) in (
        (True, ("clip", "clip_full")),
        (False, ("wo_prompt", "w_prompt")),
    ):
        for batch in ctx.batches():
            with torch.no_grad():
                rec, _ = capture_vision(ctx, batch.images, baseline=baseline)
            for layer, a in enumerate(rec.probs):  # B×H×T×T
                acc.add_head_row(layer, "vision", renorm_name, "mad_px", mean_distance(a, N, D, True))
                acc.add_head_row(layer, "vision", full_name, "mad_px", mean_distance(a, N, D, False))
                for key, v in patch_query_mass(a, N).items():
                    acc.add_head_row(layer, "vision", full_name, key, v)
    acc.add_set("vision", "reference", "uniform_px", -1, -1, uniform_distance(ctx.grid, ctx.patch), 1)
    conventions = {
        "grid": list(ctx.grid),
        "patch_px": list(ctx.patch),
        "distance": "Euclidean distance between patch centres in pixels, patch i at (i // G, i % G) "
        "(row-major, as open_clip flattens conv1)",
        "queries": "patch queries only (rows 1..N); CLS and prompt query rows dropped",
        "variants": {
            "clip": "prompt- and bias-free backbone forward, row renormalised over patch keys (CLS removed)",
            "clip_full": "prompt- and bias-free backbone, full softmax row, CLS key at distance 0",
            "wo_prompt": "the method's forward, row renormalised over patch keys (CLS and prompts removed)",
            "w_prompt": "the method's forward, full softmax row, non-spatial keys (CLS, prompts) at d_X = 0",
            "reference": "uniform attention over all patches (uniform_px)",
        },
        "d_X": 0.0,
        "cls_handling": "treated like prompts: removed and renormalised in clip/wo_prompt, distance 0 in "
        "clip_full/w_prompt (same rule for every model)",
        "masses": "mass_cls / mass_prompts / mass_patches: mean over patch queries of the attention on those "
        "keys, under clip_full (backbone) and w_prompt (method)",
        "per_image": "MAD per image and head, then mean over images (n = images)",
        "text": "not computed (no 2-D geometry)",
        "head": "0..H-1 per head; -1 = mean over heads",
    }
    return ProbeResult(acc, conventions)
