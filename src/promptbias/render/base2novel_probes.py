"""The probes on base- vs novel-class inputs (base-to-novel protocol): a table and a figure.

    from promptbias.render import base2novel_probes
    base2novel_probes.probe_rows(inputs)              # the table's rows: quantity × base / novel
    series, gaps = base2novel_probes.series(inputs, "dtd")   # the figure's curves, keyed (panel, label, view)
    base2novel_probes.draw(inputs)                    # results/figures/base2novel_probes.png|pdf

Called by the ``base2novel`` renderer. The same tensors tuned on the base classes (``runs/<ds>-base``) are
probed on base-class test images (view ``<ds>-base``) and on novel-class ones (``<ds>-novel``). A dataset
bias is class-independent, so its signature should not change between the two: the share of the prompts'
attention update that one constant vector explains (the bias decomposition, Eq. 12; curves as in
:mod:`~promptbias.render.bias_decomposition`) and where the pooled token's attention goes (EOS in text,
CLS in vision; groups and colours as in :mod:`~promptbias.render.attention_shares`), per layer, base solid
and novel dashed. A view whose probe table is missing leaves a marked gap (one view: a note in the panel;
both: a NOT RUN panel).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.lines import Line2D

from promptbias import protocols
from promptbias.render.attention_shares import GROUPS
from promptbias.render.bias_decomposition import CURVES
from promptbias.render.inputs import Inputs, head_mean_by_layer, layer_mean
from promptbias.render.registry import Gap
from promptbias.render.style import GAP_COLOR, dataset_label, gap_panel, save_figure, subplots

STEM = "base2novel_probes"
NOT_RUN = "not run"

# -- the table ----------------------------------------------------------------------------------------
PROBE_QUANTITIES = (  # (label, probe kind, branch, variant, key)
    ("explained share, vision prompts", "bias_decomposition", "vision", "prompt_tokens", "explained_share"),
    ("explained share, text prompts", "bias_decomposition", "text", "prompt_tokens", "explained_share"),
    ("EOS attention on prompt slots", "attention_stats", "text", "eos_row", "prompt"),
    ("EOS attention on the category", "attention_stats", "text", "eos_row", "category"),
)


def probe_rows(inputs: Inputs) -> list[dict[str, Any]]:
    """Per sweep dataset × probed method × quantity: its value on base- and on novel-class inputs."""
    rows = []
    for dataset in inputs.datasets:
        for method in inputs.probe_methods:
            for label, kind, branch, variant, key in PROBE_QUANTITIES:
                values = {}
                for view in protocols.VIEWS:
                    df, _ = inputs.probe(protocols.view_id(dataset, view), method, kind)
                    values[view] = layer_mean(df, branch, variant, key)
                if all(v is None or v == 0 for v in values.values()):  # not run, or no such tokens
                    continue
                rows.append({"dataset": dataset, "method": method, "quantity": label, **values})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Probes on base- vs novel-class inputs",
        "",
        "The tensors tuned on the base classes, probed on test images of the base classes and of the novel "
        "classes (each with its own class names); mean over layers of the head mean. A class-independent "
        "shift (a dataset bias) should look the same on both.",
        "",
        "| Dataset | Method | Quantity | Base | Novel | Novel − base |",
        "|:---|:---|:---|---:|---:|---:|",
    ]
    for r in rows:
        b, n = r[protocols.BASE], r[protocols.NOVEL]
        diff = f"{n - b:+.3f}" if b is not None and n is not None else ""
        cells = [f"{v:.3f}" if v is not None else NOT_RUN for v in (b, n)]
        lines.append(
            f"| {dataset_label(r['dataset'])} | {r['method']} | {r['quantity']} | {cells[0]} | {cells[1]} | {diff} |"
        )
    if not rows:
        lines.append("| — | — | no probe table of a class view yet | | | |")
    return "\n".join(lines) + "\n"


# -- the figure ---------------------------------------------------------------------------------------
def _group(branch: str, key: str) -> tuple[str, str]:
    """(label, colour) of an attention group, as Fig. 4 draws it."""
    return next((label, color) for k, label, color in GROUPS[branch] if k == key)


# (panel title, probe kind, [(method, branch, variant, key, label, colour)]): the solid (token) curves of the
# bias decomposition figure, and the pooled-token groups of Fig. 4 that prompts and the dataset bias touch.
PANELS: tuple[tuple[str, str, list[tuple[str, str, str, str, str, str]]], ...] = (
    ("explained share (Eq. 12)", "bias_decomposition",
     [(m, b, v, "explained_share", label, color) for m, b, v, label, color, ls in CURVES if ls == "-"]),
    ("text: EOS attention", "attention_stats",
     [("prompt", "text", "eos_row", k, f"EOS → {_group('text', k)[0]}", _group("text", k)[1])
      for k in ("prompt", "category", "sos")]),
    ("vision: CLS attention", "attention_stats",
     [("prompt", "vision", "cls_row", k, f"CLS → {_group('vision', k)[0]}", _group("vision", k)[1])
      for k in ("prompts", "patches")]),
)  # fmt: skip
VIEW_STYLE = {protocols.BASE: ("-", "o"), protocols.NOVEL: ("--", "x")}

Series = dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]]  # (panel, label, view) -> (layer, value)


def series(inputs: Inputs, dataset: str) -> tuple[Series, list[Gap]]:
    """Every curve of one dataset's row of the figure (layers counted from 1), and the probe tables of a
    view that could not be read."""
    out: Series = {}
    gaps: list[Gap] = []
    for title, kind, curves in PANELS:
        for view in protocols.VIEWS:
            vid = protocols.view_id(dataset, view)
            for method, branch, variant, key, label, _ in curves:
                df, _ = inputs.probe(vid, method, kind)
                if df is None:
                    gap = inputs.probe_gap(vid, method, kind)
                    if str(gap) not in {str(g) for g in gaps}:
                        gaps.append(gap)
                    continue
                rows = head_mean_by_layer(df, branch, variant, key)
                if len(rows):
                    out[(title, label, view)] = (rows["layer"].to_numpy() + 1, rows["value"].to_numpy())
    return out, gaps


def _missing(gaps: list[Gap], dataset: str, view: str, kind: str) -> list[str]:
    """The methods whose ``kind`` table of one view could not be read."""
    prefix = f"probes/{protocols.view_id(dataset, view)}/"
    return [
        g.what.split("/")[2]
        for g in gaps
        if g.what.startswith(prefix) and g.what.endswith(f"/{kind}.parquet")
    ]


def draw(inputs: Inputs) -> list[Gap]:
    """One row per sweep dataset, one column per panel; writes results/figures/base2novel_probes.*"""
    datasets = inputs.datasets
    fig, axes = subplots(len(datasets), len(PANELS), panel=(3.3, 2.4))
    gaps: list[Gap] = []
    named: set[int] = set()
    for r, dataset in enumerate(datasets):
        curves, missing = series(inputs, dataset)
        gaps += missing
        for c, (title, kind, specs) in enumerate(PANELS):
            ax = axes[r, c]
            full = f"{dataset_label(dataset)}: {title}"
            notes = [f"{view}: {', '.join(ms)} not run" for view in protocols.VIEWS
                     if (ms := _missing(missing, dataset, view, kind))]  # fmt: skip
            if not any(t == title for (t, _, _) in curves):
                gap_panel(ax, "; ".join(notes) or "no rows for this panel", full)
                continue
            for _, _, _, _, label, color in specs:
                for view, (ls, marker) in VIEW_STYLE.items():
                    if (title, label, view) in curves:
                        x, y = curves[(title, label, view)]
                        ax.plot(x, y, color=color, ls=ls, marker=marker, ms=3, lw=1.1,
                                label=label if view == protocols.BASE or (title, label, protocols.BASE) not in curves
                                else "_")  # fmt: skip
            if notes:  # a view's table missing: say so inside the panel
                ax.text(0.02, 0.97, "\n".join(notes), transform=ax.transAxes, va="top", color=GAP_COLOR,
                        fontsize=6.5, weight="bold")  # fmt: skip
            ax.set_title(full)
            ax.set_xlabel("layer")
            ax.set_ylabel("‖c̄‖² / E‖c‖²" if kind == "bias_decomposition" else "attention share")
            ax.xaxis.get_major_locator().set_params(integer=True)
            if c not in named:  # each column's curves named once, in its first drawn panel
                ax.legend(loc="best", fontsize=6, framealpha=0.7)
                named.add(c)
    key = [Line2D([], [], color="#555555", ls=ls, marker=marker, ms=3, label=f"{view}-class test images")
           for view, (ls, marker) in VIEW_STYLE.items()]  # fmt: skip
    fig.legend(handles=key, loc="outside lower center", ncol=2, frameon=False)
    save_figure(fig, inputs.cfg, STEM)
    return gaps


CAPTION = (
    "The tensors tuned on the base classes, probed on base-class (solid, o) and on novel-class (dashed, x) "
    "test images, per layer (head mean). Left: the share of the prompt keys' attention contribution that "
    "one mean vector explains (1 = a pure bias), vision and text prompts, with zero-shot CLIP's SOS token. "
    "Middle: the share of the text EOS row's attention on the prompt slots, the category tokens and SOS. "
    "Right: the share of the vision CLS row's attention on the prompts and the patches. A class-independent "
    "dataset bias looks the same on base and novel classes."
)
