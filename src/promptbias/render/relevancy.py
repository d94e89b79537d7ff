"""Figs. 2 and 3: relevancy of each text token / image patch to the alignment, zero-shot vs prompt.

    promptbias render --only fig2 --only fig3

Reads ``probes/<ds>/<method>/seed<S>/relevancy.parquet`` (variant ``norm``: each sample's EOS/CLS row
normalised to sum 1 without the read-out token itself, then averaged — the paper's R[:, eos, :eos] and
R[:, 0, 1:]). One row of panels per dataset: left, the value per position (text ``pos_<j>``; vision
``patch_<i>`` then ``prompt_<k>``) for zero-shot (blue) and the prompt model of ``probes.relevancy_prompt``
(red; the paper's 4 text + 4 vision prompts in every layer by default), the prompt slots behind the red
vertical line and zoomed in a middle panel; right, the same mass summed per token group for every probed
method. ``render.relevancy_average`` picks the text per-position average: ``zeros_after_eos`` (the
paper's: every caption counts, 0 at and after its EOS; variant ``norm``) or ``reached`` (only captions
that reach the position; variant ``norm_reached``).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from promptbias.catalog import relevancy_prompt_method
from promptbias.render.inputs import Inputs, select
from promptbias.render.registry import Gap, Item, figure_paths, register
from promptbias.render.style import (
    GAP_COLOR,
    dataset_label,
    figure_legend,
    gap_panel,
    method_color,
    method_label,
    save_figure,
    subplots,
)

TEXT_GROUPS = (("sos", "SOS"), ("prompt", "prompt"), ("template", "template"), ("category", "category"),
               ("period", "'.'"))  # fmt: skip
VISION_GROUPS = (("patches", "patches"), ("prompts", "prompts"))
AVERAGES = {  # render.relevancy_average -> (text pos_<j> variant, label)
    "zeros_after_eos": ("norm", "every caption counts, 0 at and after its EOS (the paper's)"),
    "reached": ("norm_reached", "only the captions that reach the position"),
}


def compared(cfg: dict[str, Any]) -> tuple[str, str]:
    """The per-position panel's pair: zero-shot (blue) and ``probes.relevancy_prompt`` (red)."""
    return ("zeroshot", relevancy_prompt_method(cfg))


def _position_variant(cfg: dict[str, Any], branch: str) -> str:
    return AVERAGES[cfg["render"]["relevancy_average"]][0] if branch == "text" else "norm"


def _indexed(df: Any, branch: str, prefix: str, variant: str = "norm") -> dict[int, float]:
    rows = select(df, branch, variant)
    pat = re.compile(rf"^{prefix}_(\d+)$")
    out = {}
    for key, value in zip(rows["key"], rows["value"], strict=True):
        m = pat.match(key)
        if m:
            out[int(m.group(1))] = float(value)
    return out


def _positions(df: Any, branch: str, variant: str = "norm") -> tuple[np.ndarray, np.ndarray, int]:
    """(x, y, n_prompt_slots): text positions 0..; vision patches 0..N-1 then prompts N.."""
    if branch == "text":
        pos = _indexed(df, "text", "pos", variant)
        n_prompt = len(_indexed(df, "text", "ctx"))
        x = np.arange(max(pos) + 1 if pos else 0)
        return x, np.array([pos.get(int(i), 0.0) for i in x]), n_prompt
    patches, prompts = _indexed(df, "vision", "patch"), _indexed(df, "vision", "prompt")
    n = max(patches) + 1 if patches else 0
    y = [patches.get(i, 0.0) for i in range(n)] + [prompts[k] for k in sorted(prompts)]
    return np.arange(len(y)), np.array(y), len(prompts)


def _curves(inputs: Inputs, dataset: str, branch: str) -> tuple[dict, list[Gap]]:
    curves, gaps = {}, []
    variant = _position_variant(inputs.cfg, branch)
    for method in compared(inputs.cfg):
        df, _ = inputs.probe(dataset, method, "relevancy")
        if df is None:
            gaps.append(inputs.probe_gap(dataset, method, "relevancy"))
            continue
        x, y, n_prompt = _positions(df, branch, variant)
        if len(x):
            curves[method] = (x, y, n_prompt)
    return curves, gaps


def _gap_text(gaps: list[Gap]) -> str:
    return "; ".join(f"{g.what.split('/')[2]}: {g.why}" for g in gaps) or "no relevancy rows"


def _draw_positions(ax: Any, zoom: Any, inputs: Inputs, dataset: str, branch: str) -> list[Gap]:
    curves, gaps = _curves(inputs, dataset, branch)
    title = f"{dataset_label(dataset)} — {'text token' if branch == 'text' else 'image patch'} relevancy"
    if not curves:
        gap_panel(ax, f"relevancy of {_gap_text(gaps)}", title)
        gap_panel(zoom, _gap_text(gaps), "zoom: prompt slots")
        return gaps
    n_prompt = max(c[2] for c in curves.values())
    n_fixed = max(len(c[0]) - c[2] for c in curves.values())  # text: all positions; vision: patches N
    boundary = (n_prompt + 0.5) if branch == "text" else (n_fixed - 0.5)
    for method, (x, y, _) in curves.items():
        ax.fill_between(
            x, y, step="mid", alpha=0.4, color=method_color(method), label=method_label(method), lw=0
        )
        ax.step(x, y, where="mid", color=method_color(method), lw=0.7)
    if n_prompt:
        label = "end of SOS + prompt slots" if branch == "text" else "patches | prompts"
        ax.axvline(boundary, color="red", lw=1.0, label=label)
    ax.set_xlim(-0.5, max(len(c[0]) for c in curves.values()) - 0.5)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(
        "token index (0 = SOS, then prompt slots)" if branch == "text" else "patch index, then prompts"
    )
    ax.set_ylabel("relative relevancy")
    ax.set_title(title)
    missing = [method_label(m) for m in compared(inputs.cfg) if m not in curves]
    if missing:
        ax.text(0.99, 0.97, "NOT RUN: " + ", ".join(missing), transform=ax.transAxes, color=GAP_COLOR,
                ha="right", va="top", fontsize=7, weight="bold")  # fmt: skip
    _zoom(zoom, curves, branch, n_prompt, n_fixed)
    return gaps


def _zoom(ax: Any, curves: dict, branch: str, n_prompt: int, n_fixed: int) -> None:
    """The prompt slots up close (text: SOS, slots and the next token; vision: last patches and prompts)."""
    ax.set_title("zoom: prompt slots")
    if not n_prompt:
        gap_panel(ax, "no prompt slots in these runs")
        return
    lo, hi = (0, n_prompt + 1) if branch == "text" else (max(n_fixed - 3, 0), n_fixed + n_prompt - 1)
    width = 0.8 / len(curves)
    for i, (method, (x, y, _)) in enumerate(curves.items()):
        sel = (x >= lo) & (x <= hi)
        ax.bar(
            x[sel] + (i - (len(curves) - 1) / 2) * width,
            y[sel],
            width=width,
            color=method_color(method),
            alpha=0.85,
        )
    ax.axvline((n_prompt + 0.5) if branch == "text" else (n_fixed - 0.5), color="red", lw=1.0)
    ticks = list(range(lo, hi + 1))
    if branch == "text":
        labels = ["SOS" if t == 0 else (f"P{t}" if t <= n_prompt else str(t)) for t in ticks]
    else:
        labels = [str(t) if t < n_fixed else f"P{t - n_fixed + 1}" for t in ticks]
    step = max(1, len(ticks) // 8)
    ax.set_xticks(ticks[::step], labels[::step])
    ax.set_xlabel("position")
    ax.set_ylim(bottom=0)


def _draw_groups(ax: Any, inputs: Inputs, dataset: str, branch: str) -> list[Gap]:
    groups = TEXT_GROUPS if branch == "text" else VISION_GROUPS
    methods, gaps = [], []
    for method in dict.fromkeys([*inputs.probe_methods, *compared(inputs.cfg)]):
        df, _ = inputs.probe(dataset, method, "relevancy")
        if df is None:
            gaps.append(inputs.probe_gap(dataset, method, "relevancy"))
            continue
        rows = select(df, branch, "norm")
        values = {str(k): float(v) for k, v in zip(rows["key"], rows["value"], strict=True)}
        methods.append((method, [values.get(g, 0.0) for g, _ in groups]))
    title = "per token group" if branch == "text" else "patches vs prompts"
    if not methods:
        gap_panel(ax, _gap_text(gaps), title)
        return gaps
    width = 0.8 / len(methods)
    x = np.arange(len(groups))
    for i, (method, vals) in enumerate(methods):
        ax.bar(
            x + (i - (len(methods) - 1) / 2) * width,
            vals,
            width,
            color=method_color(method),
            label=method_label(method),
        )
    ax.set_xticks(
        x,
        [label for _, label in groups],
        rotation=30 if branch == "text" else 0,
        ha="right" if branch == "text" else "center",
    )
    ax.set_ylabel("share of relevancy")
    ax.set_ylim(0, 1.12)
    ax.set_title(title)
    return gaps


def _render(inputs: Inputs, branch: str, stem: str) -> list[Gap]:
    datasets = inputs.datasets
    fig, axes = subplots(len(datasets), 3, panel=(2.6, 2.4), gridspec_kw={"width_ratios": [2.4, 1.1, 1.3]})
    gaps: list[Gap] = []
    for r, dataset in enumerate(datasets):
        gaps += _draw_positions(axes[r, 0], axes[r, 1], inputs, dataset, branch)
        gaps += _draw_groups(axes[r, 2], inputs, dataset, branch)
    figure_legend(fig, axes)
    save_figure(fig, inputs.cfg, stem)
    return _unique(gaps)


def _unique(gaps: list[Gap]) -> list[Gap]:
    return list({str(g): g for g in gaps}.values())


FIG2, FIG3 = "fig2_text_relevancy", "fig3_vision_relevancy"


def _zeroshot_caption(cfg: dict[str, Any]) -> str:
    template = cfg["probes"]["relevancy_template"]
    return f"its captions '{template.format('[Category]')}'" if template else "its per-dataset template"


def _cap2(cfg: dict[str, Any]) -> str:
    prompt = compared(cfg)[1]
    return (
        "Contribution (Chefer relevancy of the ground-truth logit, EOS row, normalised per caption without EOS "
        f"itself) of each token of the language branch, averaged over the probed test images: zero-shot CLIP "
        f"(blue, {_zeroshot_caption(cfg)}) vs prompt tuning `{prompt}` (red; probes.relevancy_prompt). "
        f"Averaged per position: {AVERAGES[cfg['render']['relevancy_average']][1]} "
        "(render.relevancy_average). Left of the red line: SOS and the learned text prompt slots (zoomed in the "
        "middle panel); right: template/class-name tokens and '.'. Right panels: the same relevancy summed per "
        "token group, for every probed method."
    )


def _cap3(cfg: dict[str, Any]) -> str:
    return (
        "Contribution of each image patch (CLS row, normalised per image without CLS itself) to the alignment, "
        f"zero-shot CLIP (blue) vs prompt tuning `{compared(cfg)[1]}` (red); right of the red line: the learned "
        "vision prompts (zoomed in the middle panel; zero-shot has none). Right panels: total relevancy on "
        "patches vs prompts."
    )


@register("fig2", "Fig. 2 — text relevancy", lambda cfg: [Item(FIG2, "Fig. 2 — text token relevancy", _cap2(cfg))],
          lambda cfg: figure_paths(cfg, FIG2), order=20)  # fmt: skip
def render_fig2(inputs: Inputs) -> list[Gap]:
    return _render(inputs, "text", FIG2)


@register("fig3", "Fig. 3 — vision relevancy", lambda cfg: [Item(FIG3, "Fig. 3 — image patch relevancy", _cap3(cfg))],
          lambda cfg: figure_paths(cfg, FIG3), order=21)  # fmt: skip
def render_fig3(inputs: Inputs) -> list[Gap]:
    return _render(inputs, "vision", FIG3)
