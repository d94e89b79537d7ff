"""Attention and prompt-similarity maps (paper Fig. 6), stored as arrays plus image ids.

    maps = cls_maps(probs_per_layer, n_patches, grid)          # B×L×G×G: CLS row over patches, head mean
    sim = prompt_similarity(block_input, n_patches, grid)      # B×P×G×G for one layer
    result = PROBES["maps"].run(ctx)                           # arrays → maps.npz, summary → maps.parquet

For the first ``probes.map_images`` images of the sample and every rotation in ``probes.rotations``
(multiples of 90°, ``torch.rot90`` over (H, W) of the uint8 image, counter-clockwise):

* ``cls_clip`` / ``cls_method``: per layer, the CLS query row over the patch keys, mean over heads,
  reshaped to the G×G grid — for the prompt- and bias-free backbone and for the method.
* ``prompt_similarity``: per layer and vision prompt, the Euclidean distance between the prompt token
  and every patch token of that layer's block input (after prompt insertion), min–max normalised over
  the patches of that image/layer/prompt, then 1 − x (1 = most similar). Upsampling to image size is
  left to the renderer.

The parquet summary: per layer, the correlation of the method's CLS map with CLIP's, each model's CLS
mass on patches, and how well maps follow a rotated image (correlation with the rotation-0 map after
rotating back).
"""

from __future__ import annotations

import numpy as np
import torch

from promptbias.probes.common import Accumulator, ProbeContext, ProbeResult, capture_vision
from promptbias.probes.registry import register_probe

EPS = 1e-12


def cls_maps(probs: list[torch.Tensor], n_patches: int, grid: tuple[int, int]) -> torch.Tensor:
    """CLS row over patches, mean over heads, per layer. Each B×H×T×T → B×L×gh×gw."""
    rows = [a[:, :, 0, 1 : 1 + n_patches].mean(1) for a in probs]  # L × (B×N)
    return torch.stack(rows, 1).reshape(rows[0].shape[0], len(rows), *grid)


def prompt_similarity(x: torch.Tensor, n_patches: int, grid: tuple[int, int]) -> torch.Tensor:
    """x: B×T×W block input (CLS, patches, prompts). 1 − minmax(‖p − x_i‖) over patches → B×P×gh×gw."""
    patches = x[:, 1 : 1 + n_patches].double()  # B×N×W
    prompts = x[:, 1 + n_patches :].double()  # B×P×W
    d = torch.cdist(prompts, patches)  # B×P×N
    lo, hi = d.amin(-1, keepdim=True), d.amax(-1, keepdim=True)
    sim = 1.0 - (d - lo) / (hi - lo).clamp_min(EPS)
    return sim.reshape(x.shape[0], prompts.shape[1], *grid).float()


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation over the last two dims. ...×gh×gw → ..."""
    a = a.flatten(-2).double()
    b = b.flatten(-2).double()
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(EPS)


def _rotate(images: torch.Tensor, degrees: int) -> torch.Tensor:
    if degrees % 90:
        raise ValueError(f"probes.rotations: {degrees} is not a multiple of 90")
    return torch.rot90(images, k=(degrees // 90) % 4, dims=(-2, -1))


@register_probe("maps")
def maps(ctx: ProbeContext) -> ProbeResult:
    """CLS attention maps (CLIP vs method) and vision-prompt similarity maps, over input rotations."""
    n = min(ctx.settings.map_images, len(ctx.ids))
    rotations = list(ctx.settings.rotations) or [0]
    N, grid, bs = ctx.n_patches, ctx.grid, ctx.settings.batch_size
    clip_maps, method_maps, sims = [], [], []  # per rotation: n×L×G×G, n×L×G×G, n×L×P×G×G
    for deg in rotations:
        per_c, per_m, per_s = [], [], []
        for start in range(0, n, bs):
            x = ctx.prepare(_rotate(ctx.images[start : min(start + bs, n)], deg))
            with torch.no_grad():
                rec_c, _ = capture_vision(ctx, x, baseline=True)
                rec_m, _ = capture_vision(ctx, x, keep_inputs=True)
            per_c.append(cls_maps(rec_c.probs, N, grid).cpu())
            per_m.append(cls_maps(rec_m.probs, N, grid).cpu())
            per_s.append(torch.stack([prompt_similarity(h, N, grid) for h in rec_m.inputs], 1).cpu())
        clip_maps.append(torch.cat(per_c) if per_c else torch.zeros(0))
        method_maps.append(torch.cat(per_m) if per_m else torch.zeros(0))
        sims.append(torch.cat(per_s) if per_s else torch.zeros(0))

    acc = Accumulator()
    if n:
        cc, cm, ps = torch.stack(clip_maps, 1), torch.stack(method_maps, 1), torch.stack(sims, 1)  # n×R×L×…
        _summarise(acc, cc, cm, ps, rotations)
        arrays = {"cls_clip": cc.numpy(), "cls_method": cm.numpy(), "prompt_similarity": ps.numpy()}
    else:
        arrays = {}
    arrays.update(
        image_ids=np.asarray(ctx.ids[:n], dtype=str),
        labels=ctx.labels[:n].cpu().numpy(),
        rotations=np.asarray(rotations, dtype=np.int64),
        grid=np.asarray(grid, dtype=np.int64),
    )
    conventions = {
        "images": f"the first {n} images of the probe sample (map_images)",
        "rotations": "torch.rot90(uint8 image, k = degrees/90, dims=(H, W)) (counter-clockwise) before normalisation",
        "arrays": {
            "cls_clip": "n×R×L×gh×gw: CLS row over patch keys, mean over heads, backbone without prompts/biases",
            "cls_method": "n×R×L×gh×gw: the same for the method's forward",
            "prompt_similarity": "n×R×L×P×gh×gw: 1 − minmax_over_patches(‖prompt − patch‖₂) at the block "
            "input of layer L (after prompt insertion); P = 0 without vision prompts",
            "image_ids": "relative paths (data/raw/<ds>/…), row order of the arrays",
        },
        "cls_map_values": "raw attention probabilities (not renormalised over patches)",
        "summary_keys": {
            "cls_map_corr (method_vs_clip)": "Pearson correlation of the method's and CLIP's CLS maps, mean over images×rotations",
            "cls_patch_mass (clip|method)": "sum of the CLS map (CLS attention mass on patches)",
            "rotation_corr (clip|method|prompt)": "correlation of the map at rotation r, rotated back, with the "
            "rotation-0 map (mean over r ≠ 0, images, prompts); needs 0 among the rotations",
        },
    }
    return ProbeResult(acc, conventions, arrays=arrays, summary_only=True)


def _summarise(
    acc: Accumulator, cc: torch.Tensor, cm: torch.Tensor, ps: torch.Tensor, rotations: list[int]
) -> None:
    n, R, L = cc.shape[:3]
    corr = _corr(cm, cc)  # n×R×L
    for layer in range(L):
        acc.add("vision", "method_vs_clip", "cls_map_corr", layer, -1, float(corr[:, :, layer].sum()), n * R)
        acc.add("vision", "clip", "cls_patch_mass", layer, -1, float(cc[:, :, layer].sum()), n * R)
        acc.add("vision", "method", "cls_patch_mass", layer, -1, float(cm[:, :, layer].sum()), n * R)
    if 0 not in rotations or R < 2:
        return
    r0 = rotations.index(0)
    for ri, deg in enumerate(rotations):
        if ri == r0:
            continue
        k = -(deg // 90) % 4
        for name, arr in (("clip", cc), ("method", cm)):
            back = torch.rot90(arr[:, ri], k=k, dims=(-2, -1))  # n×L×G×G
            c = _corr(back, arr[:, r0])  # n×L
            for layer in range(L):
                acc.add("vision", name, "rotation_corr", layer, -1, float(c[:, layer].sum()), n)
        if ps.shape[3] > 0:
            back = torch.rot90(ps[:, ri], k=k, dims=(-2, -1))  # n×L×P×G×G
            c = _corr(back, ps[:, r0]).mean(-1)  # n×L
            for layer in range(L):
                acc.add("vision", "prompt", "rotation_corr", layer, -1, float(c[:, layer].sum()), n)
