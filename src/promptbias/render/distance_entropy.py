"""Fig. 5: mean attention distance and attention entropy per head (dots) and layer, CLIP vs prompts.

    promptbias render --only fig5        # results/figures/fig5_distance_entropy_<ds>.png|pdf

Reads ``attention_distance.parquet`` and ``attention_entropy.parquet`` of the ``prompt`` run (vision
branch). Columns: CLIP (the frozen backbone: ``clip`` / ``clip_all_rows``), W/O Prompt (the prompted model,
prompt keys removed and rows renormalised: ``wo_prompt`` / ``wo_prompt_all_rows``) and W Prompt (full
softmax, prompts at distance 0: ``w_prompt`` / ``all_rows``). Dots are heads, the line is the head mean;
the dashed line is uniform attention (``reference`` rows: ``uniform_px``, ``log_T_no_prompts``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from promptbias.render.inputs import Inputs, scalar, select
from promptbias.render.registry import Gap, Item, per_dataset_figure_paths, register
from promptbias.render.style import COLORS, dataset_label, gap_panel, save_figure, subplots

COLUMNS = (("CLIP", COLORS["clip"]), ("W/O Prompt", "#ff7f0e"), ("W Prompt", COLORS["prompt"]))
ROWS = (  # kind, metric key, y label, variants per column (prompt run; zero-shot fallback for CLIP), reference
    ("attention_distance", "mad_px", "mean attention distance (px)", ("clip", "wo_prompt", "w_prompt"),
     ("wo_prompt", None, None), ("uniform_px", "uniform attention")),
    ("attention_entropy", "entropy", "attention entropy (nats)", ("clip_all_rows", "wo_prompt_all_rows", "all_rows"),
     ("all_rows", None, None), ("log_T_no_prompts", "uniform over CLS+patches")),
)  # fmt: skip
STEM = "fig5_distance_entropy"


def _dots(ax: Any, rows: Any, color: str) -> None:
    heads = rows[rows["head"] >= 0]
    rng = np.random.default_rng(0)  # deterministic jitter so overlapping heads stay visible
    x = heads["layer"].to_numpy() + 1 + rng.uniform(-0.18, 0.18, len(heads))
    ax.scatter(x, heads["value"], s=9, color=color, alpha=0.6, lw=0, label="heads")
    mean = rows[rows["head"] == -1].sort_values("layer")
    if len(mean):
        ax.plot(
            mean["layer"] + 1, mean["value"], color=color, lw=1.2, marker="o", ms=2.5, label="mean over heads"
        )


def render_dataset(inputs: Inputs, dataset: str) -> list[Gap]:
    fig, axes = subplots(2, 3, panel=(2.6, 2.2), sharey="row")
    gaps: list[Gap] = []
    for r, (kind, key, ylabel, variants, fallbacks, (ref_key, ref_label)) in enumerate(ROWS):
        df, why = inputs.probe(dataset, "prompt", kind)
        zs, _ = inputs.probe(dataset, "zeroshot", kind) if df is None else (None, "")
        ref = scalar(df if df is not None else zs, "vision", "reference", ref_key)
        layers = 1
        for c, ((title, color), variant, fallback) in enumerate(
            zip(COLUMNS, variants, fallbacks, strict=True)
        ):
            ax = axes[r, c]
            rows = select(df, "vision", variant, key)
            if not len(rows) and fallback is not None:  # CLIP from the zero-shot run itself
                rows = select(zs, "vision", fallback, key)
            if not len(rows):
                gap = Gap(f"probes/{dataset}/prompt/{kind}.parquet", why or f"no {variant} rows")
                gap_panel(ax, f"prompt {kind.replace('_', ' ')}: {gap.why}", title if r == 0 else None)
                if str(gap) not in {str(g) for g in gaps}:
                    gaps.append(gap)
                continue
            _dots(ax, rows, color)
            layers = max(layers, int(rows["layer"].max()) + 1)
            if ref is not None:
                ax.axhline(ref, color="k", ls="--", lw=0.8, label=ref_label)
            ax.set_xticks(range(1, layers + 1))
            ax.set_xlabel("layer")
            if r == 0:
                ax.set_title(title)
            if c == 0:
                ax.set_ylabel(ylabel)
            if c == 2:
                ax.legend(frameon=False, loc="best", fontsize=6)
    fig.suptitle(
        f"Fig. 5 — {dataset_label(dataset)}: attention distance and entropy per head (vision)", fontsize=9
    )
    save_figure(fig, inputs.cfg, f"{STEM}_{dataset}")
    return gaps


_CAP = (
    "Vision branch, per layer: mean attention distance in pixels over patch queries (top) and mean row "
    "entropy in nats over all query rows (bottom), one dot per head and the line for the head mean. CLIP: "
    "the frozen backbone. W/O Prompt: the prompted model with the prompt keys removed and each row "
    "renormalised. W Prompt: the full attention, prompts counted at distance 0. Dashed: uniform attention "
    "over all patches (distance) or over CLS+patches (entropy)."
)


def _items(cfg: dict[str, Any]) -> list[Item]:
    return [
        Item(f"{STEM}_{d}", f"Fig. 5 — distance and entropy, {dataset_label(d)}", _CAP)
        for d in cfg["sweep"]["datasets"]
    ]


_outputs = per_dataset_figure_paths(STEM)


@register("fig5", "Fig. 5 — attention distance and entropy", _items, _outputs, order=40)
def render_fig5(inputs: Inputs) -> list[Gap]:
    return [g for d in inputs.datasets for g in render_dataset(inputs, d)]
