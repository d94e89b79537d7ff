"""Fig. 6: CLS attention heatmaps per layer (CLIP vs prompted) and vision-prompt similarity maps.

    promptbias render --only fig6        # results/figures/fig6_maps_<ds>.png|pdf

Reads ``maps.npz`` of the ``prompt`` run (probes/maps.py layout: ``cls_clip``/``cls_method`` n×R×L×G×G,
``prompt_similarity`` n×R×L×P×G×G, ``image_ids``, ``rotations``) and the input images named by
``image_ids`` under ``data/raw/<ds>/`` (shown with the test transform's resize + centre crop, rotated
like the probe rotated them: counter-clockwise). Per image: CLIP's and the prompted model's CLS attention
over the patches at rotation 0, then the first vision prompt's similarity map (1 − normalised Euclidean
distance) at every rotation; one column per layer. Heatmaps are min–max scaled per panel and upsampled
bilinearly over the image.
"""

from __future__ import annotations

from typing import Any

import matplotlib
import numpy as np

from promptbias import paths
from promptbias.render.inputs import Inputs
from promptbias.render.registry import Gap, Item, per_dataset_figure_paths, register
from promptbias.render.style import dataset_label, gap_figure, save_figure, subplots

STEM = "fig6_maps"
MAX_IMAGES = 2  # images drawn per dataset (the npz may hold more)
DISPLAY = 112  # pixels of the displayed input
CMAP = "jet"


def load_image(inputs: Inputs, dataset: str, image_id: str) -> np.ndarray | None:
    """H×W×3 uint8: resize short side to DISPLAY (bicubic) + centre crop; None when the file is missing."""
    from PIL import Image

    path = paths.raw_dir(inputs.data_root, dataset) / image_id
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = DISPLAY / min(w, h)
            im = im.resize((max(DISPLAY, round(w * s)), max(DISPLAY, round(h * s))), Image.BICUBIC)
            w, h = im.size
            left, top = (w - DISPLAY) // 2, (h - DISPLAY) // 2
            return np.asarray(im.crop((left, top, left + DISPLAY, top + DISPLAY)))
    except (OSError, ValueError):
        return None


def upsample(grid_map: np.ndarray, size: int = DISPLAY) -> np.ndarray:
    """G×G → size×size, min–max scaled to [0, 1], bilinear."""
    from PIL import Image

    m = np.asarray(grid_map, dtype=np.float64)
    lo, hi = np.nanmin(m), np.nanmax(m)
    m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    return np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))


def _overlay(ax: Any, image: np.ndarray | None, heat: np.ndarray | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for side in ax.spines.values():
        side.set_visible(False)
    if image is not None:
        ax.imshow(image if heat is None else image.mean(-1), cmap=None if heat is None else "gray",
                  extent=(0, DISPLAY, DISPLAY, 0))  # fmt: skip
    if heat is not None:
        ax.imshow(heat, cmap=CMAP, alpha=0.55 if image is not None else 1.0, vmin=0, vmax=1,
                  extent=(0, DISPLAY, DISPLAY, 0))  # fmt: skip
    if image is None and heat is None:
        ax.text(
            0.5,
            0.5,
            "image\nnot found",
            ha="center",
            va="center",
            fontsize=6,
            color="#b00020",
            transform=ax.transAxes,
        )


def render_dataset(inputs: Inputs, dataset: str) -> list[Gap]:
    stem = f"{STEM}_{dataset}"
    title = f"Fig. 6 — {dataset_label(dataset)}: CLS attention and vision-prompt similarity maps"
    arrays, why = inputs.arrays(dataset, "prompt", "maps")
    needed = ("cls_clip", "cls_method", "image_ids")
    if arrays is None or any(k not in arrays for k in needed) or arrays["cls_clip"].ndim != 5:
        reason = why or "maps.npz holds no maps (probes.map_images = 0?)"
        gap_figure(inputs.cfg, stem, title, f"maps of the prompt run: {reason}")
        return [Gap(f"probes/{dataset}/prompt/maps.npz", reason)]
    cc, cm = arrays["cls_clip"], arrays["cls_method"]
    ps = arrays.get("prompt_similarity")
    rotations = [int(r) for r in arrays.get("rotations", np.array([0]))]
    ids = [str(i) for i in arrays["image_ids"]]
    n, _, L = cc.shape[:3]
    n_img = min(n, MAX_IMAGES)
    r0 = rotations.index(0) if 0 in rotations else 0
    has_prompts = ps is not None and ps.ndim == 6 and ps.shape[3] > 0
    row_specs = [("CLIP\nCLS attn.", "clip", r0), ("Prompted\nCLS attn.", "method", r0)]
    row_specs += [(f"prompt sim.\n{rotations[ri]}°", "sim", ri) for ri in range(len(rotations))]
    rows = len(row_specs) * n_img
    fig, axes = subplots(rows, L + 1, panel=(0.95, 0.95))
    gaps: list[Gap] = []
    missing_images = []
    for i in range(n_img):
        base = load_image(inputs, dataset, ids[i])
        if base is None:
            missing_images.append(ids[i])
        for s, (label, what, ri) in enumerate(row_specs):
            r = i * len(row_specs) + s
            k = (rotations[ri] // 90) % 4
            image = None if base is None else np.rot90(base, k=k, axes=(0, 1))
            _overlay(axes[r, 0], image, None)
            axes[r, 0].set_ylabel(label, fontsize=6.5, rotation=0, ha="right", va="center", labelpad=4)
            for layer in range(L):
                ax = axes[r, layer + 1]
                if what == "sim" and not has_prompts:
                    _overlay(ax, None, None)
                    ax.text(0.5, 0.5, "no vision\nprompts", ha="center", va="center", fontsize=5.5,
                            color="#b00020", transform=ax.transAxes)  # fmt: skip
                    continue
                grid = (
                    {"clip": cc, "method": cm}[what][i, ri, layer] if what != "sim" else ps[i, ri, layer, 0]
                )
                _overlay(ax, image, upsample(grid))
        axes[i * len(row_specs), 0].set_title(f"image {i + 1}", fontsize=7)
    for layer in range(L):
        axes[0, layer + 1].set_title(f"L{layer + 1}", fontsize=7)
    if missing_images:
        gaps.append(Gap(f"data/raw/{dataset}", "images not found: " + ", ".join(missing_images)))
    if not has_prompts:
        gaps.append(Gap(f"probes/{dataset}/prompt/maps.npz", "no vision prompts: no similarity maps"))
    mappable = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, 1), cmap=CMAP)
    fig.colorbar(mappable, ax=axes, location="bottom", shrink=0.35, aspect=30, pad=0.01,
                 label="heatmap, min–max scaled per panel (0 = low, 1 = high)")  # fmt: skip
    fig.suptitle(title, fontsize=8)
    save_figure(fig, inputs.cfg, stem)
    return gaps


_CAP = (
    "Per probed test image: the CLS token's attention over the patches (mean over heads) for CLIP and for "
    "the prompted model, per layer (L1 = first block), and the similarity of the first learned vision "
    "prompt to every patch token at that layer's input (1 − min–max normalised Euclidean distance) for the "
    "input rotated by 0/90/180/270° counter-clockwise. Each heatmap is min–max scaled and upsampled over "
    "the (grey) input; red = high."
)


def _items(cfg: dict[str, Any]) -> list[Item]:
    return [Item(f"{STEM}_{d}", f"Fig. 6 — maps, {dataset_label(d)}", _CAP) for d in cfg["sweep"]["datasets"]]


_outputs = per_dataset_figure_paths(STEM)


@register("fig6", "Fig. 6 — attention and similarity maps", _items, _outputs, order=50)
def render_fig6(inputs: Inputs) -> list[Gap]:
    return [g for d in inputs.datasets for g in render_dataset(inputs, d)]
