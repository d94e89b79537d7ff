"""Sensitivity (paper §3.5): accuracy vs prompt depth and vs number of prompts, with bias tuning for reference.

    promptbias render --only sensitivity   # results/figures/sensitivity.png|pdf

Reads the aggregated grid runs ``<ds>/prompt-d<D>-n<N>`` of metrics/summary.json (``sensitivity.depths``
× ``sensitivity.n_ctx`` on ``sensitivity.datasets``). One row per dataset: accuracy vs depth (one line
per number of prompts) and vs number of prompts (one line per depth), mean with a ±std band over seeds;
bias tuning (dashed, with its band) and zero-shot CLIP (dotted) as horizontal references.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from promptbias.render.inputs import Inputs
from promptbias.render.registry import Gap, Item, figure_paths, register
from promptbias.render.style import COLORS, dataset_label, gap_figure, gap_panel, save_figure, subplots

STEM = "sensitivity"


def grid_values(inputs: Inputs, dataset: str) -> dict[tuple[int, int], tuple[float, float]]:
    """(depth, n) -> (mean, std) for the grid runs that exist."""
    sens = inputs.cfg.get("sensitivity", {})
    out = {}
    for d in sens.get("depths", []):
        for n in sens.get("n_ctx", []):
            e = inputs.run(dataset, f"prompt-d{d}-n{n}")
            if e is not None:
                out[(int(d), int(n))] = (float(e["accuracy_mean"]), float(e.get("accuracy_std") or 0.0))
    return out


def _references(ax: Any, inputs: Inputs, dataset: str) -> None:
    bias = inputs.run(dataset, "bias")
    if bias is not None:
        m, s = float(bias["accuracy_mean"]), float(bias.get("accuracy_std") or 0.0)
        ax.axhline(m, color=COLORS["bias"], ls="--", lw=1.1, label="bias tuning")
        ax.axhspan(m - s, m + s, color=COLORS["bias"], alpha=0.12, lw=0)
    zs = inputs.run(dataset, "zeroshot")
    if zs is not None:
        ax.axhline(float(zs["accuracy_mean"]), color="#555555", ls=":", lw=1.0, label="zero-shot CLIP")


def _lines(
    ax: Any, values: dict, along: int, others: list[int], xs: list[int], label: str, cmap: str
) -> None:
    colors = plt.get_cmap(cmap)(np.linspace(0.45, 0.95, max(len(others), 1)))
    for color, o in zip(colors, others, strict=True):
        pts = [
            (x, *values[(x, o) if along == 0 else (o, x)])
            for x in xs
            if ((x, o) if along == 0 else (o, x)) in values
        ]
        if not pts:
            continue
        x, m, s = (np.array(v) for v in zip(*pts, strict=True))
        ax.plot(x, m, marker="o", ms=3, color=color, lw=1.2, label=f"{label} = {o}")
        ax.fill_between(x, m - s, m + s, color=color, alpha=0.15, lw=0)


def render_sensitivity(inputs: Inputs) -> list[Gap]:
    sens = inputs.cfg.get("sensitivity", {})
    datasets = list(sens.get("datasets", [])) if sens.get("enabled") else []
    title = "Sensitivity — accuracy vs prompt depth and number of prompts"
    if not datasets:
        reason = (
            "sensitivity.enabled is false — set it (and sensitivity.datasets) in params.yaml to run the grid"
        )
        gap_figure(inputs.cfg, STEM, title, reason)
        return [Gap("sensitivity", reason)]
    depths = sorted(int(d) for d in sens.get("depths", []))
    ns = sorted(int(n) for n in sens.get("n_ctx", []))
    fig, axes = subplots(len(datasets), 2, panel=(3.3, 2.4))
    gaps = []
    for r, dataset in enumerate(datasets):
        values = grid_values(inputs, dataset)
        name = dataset_label(dataset)
        if not values:
            for c, what in enumerate(("prompt depth", "number of prompts")):
                gap_panel(axes[r, c], f"{dataset}: no prompt-d<D>-n<N> runs aggregated", f"{name}: vs {what}")
            gaps.append(Gap(f"sensitivity/{dataset}", "no grid runs in metrics/summary.json"))
            continue
        if len(values) < len(depths) * len(ns):
            gaps.append(
                Gap(
                    f"sensitivity/{dataset}", f"{len(values)} of {len(depths) * len(ns)} grid runs aggregated"
                )
            )
        ax = axes[r, 0]
        _lines(ax, values, 0, ns, depths, "prompts", "Reds")
        _references(ax, inputs, dataset)
        ax.set_xticks(depths)
        ax.set_xlabel("prompt depth (layers with prompts)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{name}: vs prompt depth")
        ax.legend(frameon=False, fontsize=6, loc="best")
        ax = axes[r, 1]
        _lines(ax, values, 1, depths, ns, "depth", "Blues")
        _references(ax, inputs, dataset)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        ax.set_xlabel("number of prompts per branch")
        ax.set_title(f"{name}: vs number of prompts")
        ax.legend(frameon=False, fontsize=6, loc="best")
    save_figure(fig, inputs.cfg, STEM)
    return gaps


_CAP = (
    "Top-1 test accuracy (%) of multi-modal prompt tuning over the sensitivity grid: left, against the "
    "number of layers with prompts (one line per number of prompts); right, against the number of prompts "
    "per branch (log scale; one line per depth). Lines: mean over seeds; bands: ± std. Dashed green: bias "
    "tuning (± std band); dotted grey: zero-shot CLIP."
)


@register("sensitivity", "Sensitivity analysis", lambda cfg: [Item(STEM, "Sensitivity — prompt depth and number", _CAP)],
          lambda cfg: figure_paths(cfg, STEM), order=60)  # fmt: skip
def _render(inputs: Inputs) -> list[Gap]:
    return render_sensitivity(inputs)
