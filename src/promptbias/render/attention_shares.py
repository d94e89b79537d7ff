"""Fig. 4: where the pooled token's attention goes (EOS in text, CLS in vision), per layer and head.

    promptbias render --only fig4        # results/figures/fig4_attention_shares_<ds>.png|pdf

Reads ``attention_stats.parquet`` of the ``prompt`` run: ``eos_row``/``cls_row`` (the prompted model) and
``clip_eos_row``/``clip_cls_row`` (the same inputs through the frozen backbone; falls back to the zero-shot
run's own rows). Each panel stacks the shares of the token groups (they sum to 1) for every head, heads
side by side within a layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.patches import Patch

from promptbias.render.inputs import Inputs, select
from promptbias.render.registry import Gap, Item, per_dataset_figure_paths, register
from promptbias.render.style import dataset_label, gap_panel, save_figure, subplots

GROUPS = {
    "text": (("sos", "SOS", "#4c72b0"), ("prompt", "prompt slots", "#d62728"), ("template", "template words", "#ff9f40"),
             ("category", "category", "#2ca02c"), ("period", "'.'", "#9467bd"), ("eos", "EOS (self)", "#8c8c8c")),
    "vision": (("cls", "CLS (self)", "#8c8c8c"), ("patches", "patches", "#4c72b0"), ("prompts", "prompts", "#d62728")),
}  # fmt: skip
PANELS = (  # (branch, title, [(method, variant), fallbacks...])
    ("text", "Text · CLIP (EOS row)", [("prompt", "clip_eos_row"), ("zeroshot", "eos_row")]),
    ("text", "Text · prompted (EOS row)", [("prompt", "eos_row")]),
    ("vision", "Vision · CLIP (CLS row)", [("prompt", "clip_cls_row"), ("zeroshot", "cls_row")]),
    ("vision", "Vision · prompted (CLS row)", [("prompt", "cls_row")]),
)
STEM = "fig4_attention_shares"


def _stacked(ax: Any, rows: Any, branch: str) -> None:
    per_head = rows[rows["head"] >= 0]
    layers = sorted(per_head["layer"].unique())
    heads = sorted(per_head["head"].unique())
    H = len(heads)
    table = per_head.pivot_table(index=["layer", "head"], columns="key", values="value", aggfunc="mean")
    x = np.array([li * (H + 1) + h for li in range(len(layers)) for h in range(H)], dtype=float)
    bottom = np.zeros(len(x))
    for key, label, color in GROUPS[branch]:
        vals = np.array(
            [
                table[key].get((layer, head), 0.0) if key in table else 0.0
                for layer in layers
                for head in heads
            ]
        )
        vals = np.nan_to_num(vals)
        ax.bar(x, vals, bottom=bottom, width=1.0, color=color, label=label, lw=0)
        bottom += vals
    centres = [li * (H + 1) + (H - 1) / 2 for li in range(len(layers))]
    ax.set_xticks(centres, [f"L{int(layer) + 1}" for layer in layers])
    ax.set_xlim(-1, len(layers) * (H + 1) - 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("attention share")
    ax.grid(axis="x", visible=False)
    ax.set_xlabel(f"layer (one bar per head, heads 1–{H} left to right)", fontsize=7)


def render_dataset(inputs: Inputs, dataset: str) -> list[Gap]:
    fig, axes = subplots(len(PANELS), 1, panel=(7.2, 1.9))
    gaps: list[Gap] = []
    for ax, (branch, title, sources) in zip(axes[:, 0], PANELS, strict=True):
        rows, reasons = None, []
        for method, variant in sources:
            df, why = inputs.probe(dataset, method, "attention_stats")
            sel = select(df, branch, variant)
            if len(sel):
                rows = sel
                break
            reasons.append(
                Gap(f"probes/{dataset}/{method}/attention_stats.parquet", why or f"no {variant} rows")
            )
        if rows is None:
            gap_panel(ax, "; ".join(f"{g.what.split('/')[2]}: {g.why}" for g in reasons), title)
            gaps += [g for g in reasons if str(g) not in {str(x) for x in gaps}]
            continue
        _stacked(ax, rows, branch)
        ax.set_title(title, loc="left")
    for ax, branch in ((axes[0, 0], "text"), (axes[2, 0], "vision")):
        handles = [Patch(color=c, label=lab) for _, lab, c in GROUPS[branch]]
        ax.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            frameon=False,
            title=f"{branch} groups",
        )
    fig.suptitle(
        f"Fig. 4 — {dataset_label(dataset)}: EOS / CLS attention shares per layer and head", fontsize=9
    )
    save_figure(fig, inputs.cfg, f"{STEM}_{dataset}")
    return gaps


_CAP = (
    "Share of the pooled token's attention on each token group, per layer (L1 = first block) and head "
    "(one bar per head, heads side by side): text EOS row (SOS, prompt slots — for CLIP the template word "
    "in that slot — template words, category tokens, '.', EOS itself) and vision CLS row (CLS itself, "
    "patches, prompts), for CLIP (the frozen backbone on the same inputs) and the prompted model. "
    "Averaged over all class captions (text) and the probed test images (vision)."
)


def _items(cfg: dict[str, Any]) -> list[Item]:
    return [
        Item(f"{STEM}_{d}", f"Fig. 4 — attention shares, {dataset_label(d)}", _CAP)
        for d in cfg["sweep"]["datasets"]
    ]


_outputs = per_dataset_figure_paths(STEM)


@register("fig4", "Fig. 4 — attention shares", _items, _outputs, order=30)
def render_fig4(inputs: Inputs) -> list[Gap]:
    return [g for d in inputs.datasets for g in render_dataset(inputs, d)]
