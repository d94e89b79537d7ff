"""One look for every figure: Agg backend, fonts, method colours, atomic saving, "not run" panels.

fig, axes = subplots(2, 3, panel=(3.0, 2.4))
gap_panel(ax, "prompt: not run")              # a clearly marked gap instead of a plot
save_figure(fig, cfg, "fig5_distance_entropy_dtd")   # results/figures/<stem>.png + .pdf, atomically
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from promptbias import paths
from promptbias.io import atomic_path
from promptbias.render.paper import display_name
from promptbias.render.registry import figure_formats

# Zero-shot blue and prompt red, as in the paper's Figs. 2–3; bias tuning green.
COLORS = {"zeroshot": "#1f77b4", "clip": "#1f77b4", "prompt": "#d62728", "bias": "#2ca02c", "grid": "#7f7f7f"}
LABELS = {"zeroshot": "Zero-shot CLIP", "prompt": "Prompt tuning", "bias": "Bias tuning"}
GAP_COLOR = "#b00020"
DPI = 110

plt.rcParams.update(
    {
        "font.size": 8,
        "axes.titlesize": 9,
        "axes.labelsize": 8,
        "legend.fontsize": 7,
        "xtick.labelsize": 7,
        "ytick.labelsize": 7,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.25,
        "grid.linewidth": 0.5,
        "figure.dpi": DPI,
        "savefig.dpi": DPI,
        "pdf.fonttype": 42,
        "svg.fonttype": "none",
    }
)


def method_label(method: str) -> str:
    return LABELS.get(method, method)


def method_color(method: str) -> str:
    return COLORS.get(method, COLORS["prompt"] if method.startswith("prompt") else "#9467bd")


def dataset_label(dataset: str) -> str:
    return display_name(dataset)


def subplots(rows: int, cols: int, panel: tuple[float, float] = (3.0, 2.2), **kw: Any):
    """A rows×cols grid of panels of the given size (inches); always a 2-D array of axes."""
    fig, axes = plt.subplots(
        rows, cols, figsize=(panel[0] * cols, panel[1] * rows), squeeze=False, layout="constrained", **kw
    )
    return fig, axes


def gap_panel(ax: Any, text: str, title: str | None = None, wrap: int = 26) -> None:
    """Mark a missing input: hatched empty panel with a red 'NOT RUN' label and the reason."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(True)
        ax.spines[side].set_color(GAP_COLOR)
        ax.spines[side].set_linestyle("--")
    ax.set_facecolor("#fff5f5")
    ax.text(0.5, 0.62, "NOT RUN", ha="center", va="center", color=GAP_COLOR, fontsize=11, weight="bold",
            transform=ax.transAxes)  # fmt: skip
    ax.text(0.5, 0.36, _wrap(text, wrap), ha="center", va="center", color=GAP_COLOR, fontsize=6.5,
            transform=ax.transAxes)  # fmt: skip
    if title:
        ax.set_title(title)


def figure_legend(fig: Any, axes: Any, ncol: int = 4) -> None:
    """One legend for the whole figure, below the panels (labels collected from every axis, first wins)."""
    handles: dict[str, Any] = {}
    for ax in getattr(axes, "flat", axes):
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if not lab.startswith("_"):
                handles.setdefault(lab, h)
    if handles:
        fig.legend(
            list(handles.values()), list(handles), loc="outside lower center", ncol=ncol, frameon=False
        )


def _wrap(text: str, width: int) -> str:
    import textwrap

    lines = textwrap.wrap(text, width)
    return "\n".join(lines[:4] + (["…"] if len(lines) > 4 else []))


def save_figure(fig: Any, cfg: dict[str, Any], stem: str) -> list[Path]:
    """Write results/figures/<stem>.<fmt> for every configured format, each atomically; close the figure."""
    written = []
    try:
        for fmt in figure_formats(cfg):
            path = paths.figure_file(stem, fmt)
            with atomic_path(path, suffix=f".{fmt}") as tmp:
                fig.savefig(tmp, format=fmt, metadata=_metadata(fmt))
            written.append(path)
    finally:
        plt.close(fig)
    return written


def _metadata(fmt: str) -> dict[str, Any] | None:
    """Deterministic files: no creation dates in PDF/SVG/PNG metadata."""
    if fmt == "pdf":
        return {"CreationDate": None, "ModDate": None, "Creator": "promptbias render"}
    if fmt == "svg":
        return {"Date": None}
    if fmt == "png":
        return {"Software": "promptbias render"}
    return None


def gap_figure(cfg: dict[str, Any], stem: str, title: str, text: str) -> list[Path]:
    """A whole figure that is one marked gap (the input of every panel is missing)."""
    fig, axes = subplots(1, 1, panel=(7.0, 2.2))
    gap_panel(axes[0, 0], text, title, wrap=80)
    return save_figure(fig, cfg, stem)
