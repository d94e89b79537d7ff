"""Bias decomposition: how much of the prompts' attention term (Eq. 12) is one input-independent vector.

    promptbias render --only bias_decomposition
    # results/figures/bias_decomposition.png|pdf, results/tables/bias_decomposition.{csv,md}

Reads ``bias_decomposition.parquet`` of every probed method. ``explained_share`` = ‖c̄‖² / E‖c_i‖² of the
prompt-key contribution c_i (1 = a pure bias added to every token); ``rms_norm / update_rms_norm`` = its
size relative to the whole attention update; the text SOS key (``sos_*``) is CLIP's own bias analogue.
The CSV holds every row (one per dataset × method × branch × variant × layer); the Markdown summarises
over layers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from promptbias import paths
from promptbias.io import write_csv, write_text
from promptbias.render.inputs import Inputs
from promptbias.render.registry import Gap, Item, figure_paths, register
from promptbias.render.style import (
    COLORS,
    dataset_label,
    figure_legend,
    gap_panel,
    method_label,
    save_figure,
    subplots,
)

STEM = "bias_decomposition"
METRICS = ("explained_share", "bias_norm", "rms_norm", "residual_rms", "update_rms_norm", "input_rms_norm",
           "key_mass", "n_tokens")  # fmt: skip
CURVES = (  # (method, branch, variant, label, colour, line style)
    ("prompt", "vision", "prompt_tokens", "vision prompts → CLS+patches", COLORS["prompt"], "-"),
    ("prompt", "vision", "prompt_cls", "vision prompts → CLS", COLORS["prompt"], "--"),
    ("prompt", "text", "prompt_tokens", "text prompts → later tokens", "#ff7f0e", "-"),
    ("prompt", "text", "prompt_eos", "text prompts → EOS", "#ff7f0e", "--"),
    ("zeroshot", "text", "sos_tokens", "CLIP: SOS → later tokens", COLORS["clip"], "-"),
    ("zeroshot", "text", "sos_eos", "CLIP: SOS → EOS", COLORS["clip"], "--"),
)


def tidy(inputs: Inputs):
    """One row per dataset × method × branch × variant × layer with the metrics as columns."""
    import pandas as pd

    frames = []
    for dataset in inputs.datasets:
        for method in inputs.probe_methods:
            df, _ = inputs.probe(dataset, method, "bias_decomposition")
            if df is None or not len(df):
                continue
            wide = df.pivot_table(
                index=["branch", "variant", "layer"], columns="key", values="value", aggfunc="mean"
            )
            wide = wide.reset_index()
            wide.insert(0, "method", method)
            wide.insert(0, "dataset", dataset)
            frames.append(wide)
    if not frames:
        return pd.DataFrame(columns=["dataset", "method", "branch", "variant", "layer", *METRICS])
    out = pd.concat(frames, ignore_index=True)
    out.columns.name = None
    order = ["dataset", "method", "branch", "variant", "layer"]
    return out[order + [c for c in out.columns if c not in order]].sort_values(order, kind="stable")


def markdown(df: Any, gaps: list[Gap]) -> str:
    lines = [
        "# Bias decomposition of the prompts' attention contribution",
        "",
        "Per layer ℓ the contribution c_i of the prompt keys (or CLIP's SOS key) to every query token's attention "
        "update; *explained share* = ‖c̄‖² / E‖c_i‖² (1 = the same vector for every token and input, i.e. a bias). "
        "*rel. size* = RMS‖c_i‖ / RMS‖whole attention update‖; *mass* = attention on those keys. "
        "Mean over layers (min–max in brackets).",
        "",
        "| Dataset | Method | Branch | Keys → queries | explained share | rel. size | mass | ‖c̄‖ | layers |",
        "|:---|:---|:---|:---|---:|---:|---:|---:|---:|",
    ]
    parts = df[df["variant"].str.startswith(("prompt_", "sos_"))] if len(df) else df
    for (dataset, method, branch, variant), g in parts.groupby(
        ["dataset", "method", "branch", "variant"], sort=False
    ):
        share = g.get("explained_share", np.nan)
        rel = g.get("rms_norm", np.nan) / g.get("update_rms_norm", np.nan)
        lines.append(
            f"| {dataset_label(dataset)} | {method} | {branch} | {variant.replace('_', ' → ')} | "
            f"{np.nanmean(share):.3f} [{np.nanmin(share):.2f}–{np.nanmax(share):.2f}] | {np.nanmean(rel):.3f} | "
            f"{np.nanmean(g.get('key_mass', np.nan)):.3f} | {np.nanmean(g.get('bias_norm', np.nan)):.3g} | {len(g)} |"
        )
    learned = df[df["variant"].isin(["learned_bias", "learned_prompt"])] if len(df) else df
    if len(learned):
        lines += ["", "Learned vectors: mean norm over layers.", "", "| Dataset | Method | Branch | Vector | mean ‖·‖ | layers |",
                  "|:---|:---|:---|:---|---:|---:|"]  # fmt: skip
        for (dataset, method, branch, variant), g in learned.groupby(
            ["dataset", "method", "branch", "variant"], sort=False
        ):
            col = "norm" if "norm" in g and g["norm"].notna().any() else "norm_mean"
            lines.append(
                f"| {dataset_label(dataset)} | {method} | {branch} | {variant} | {np.nanmean(g[col]):.3g} | {len(g)} |"
            )
    if gaps:
        lines += ["", "Not run yet: " + "; ".join(str(g) for g in gaps)]
    return "\n".join(lines) + "\n"


def _draw(inputs: Inputs, df: Any) -> list[Gap]:
    datasets = inputs.datasets
    fig, axes = subplots(len(datasets), 3, panel=(2.9, 2.3))
    gaps: list[Gap] = []
    for r, dataset in enumerate(datasets):
        d = df[df["dataset"] == dataset]
        name = dataset_label(dataset)
        titles = (f"{name}: explained share", f"{name}: relative size", f"{name}: learned vectors")
        if not len(d):
            missing = [inputs.probe_gap(dataset, m, "bias_decomposition") for m in inputs.probe_methods]
            why = "; ".join(f"{g.what.split('/')[2]}: {g.why}" for g in missing) or "no probed methods"
            for c in range(3):
                gap_panel(axes[r, c], why, titles[c])
            gaps += missing
            continue
        for method, branch, variant, label, color, ls in CURVES:
            g = d[(d["method"] == method) & (d["branch"] == branch) & (d["variant"] == variant)].sort_values(
                "layer"
            )
            if not len(g):
                continue
            x = g["layer"] + 1
            axes[r, 0].plot(
                x, g["explained_share"], color=color, ls=ls, marker="o", ms=2.5, lw=1.1, label=label
            )
            axes[r, 1].plot(
                x, g["rms_norm"] / g["update_rms_norm"], color=color, ls=ls, marker="o", ms=2.5, lw=1.1
            )
        for method, variant, col, palette in (
            ("bias", "learned_bias", "norm", ("#1b7837", "#7fbf7b")),
            ("prompt", "learned_prompt", "norm_mean", ("#762a83", "#c2a5cf")),
        ):
            for branch, color, ls in (("vision", palette[0], "-"), ("text", palette[1], "--")):
                g = d[
                    (d["method"] == method) & (d["branch"] == branch) & (d["variant"] == variant)
                ].sort_values("layer")
                if len(g) and col in g:
                    axes[r, 2].plot(g["layer"] + 1, g[col], color=color, ls=ls, marker="o", ms=2.5, lw=1.1,
                                    label=f"{method_label(method)}: learned {branch} {'bias' if method == 'bias' else 'prompts'} norm")  # fmt: skip
        axes[r, 0].set_ylim(0, 1.02)
        labels = ("‖c̄‖² / E‖c‖²", "RMS(c) / RMS(attention update)", "L2 norm")
        for c in range(3):
            ax = axes[r, c]
            ax.set_title(titles[c])
            ax.set_xlabel("layer")
            ax.set_ylabel(labels[c])
            ax.xaxis.get_major_locator().set_params(integer=True)
            if not ax.lines:
                gap_panel(ax, "no rows for this panel (method not probed?)", titles[c])
    figure_legend(fig, axes, ncol=3)
    save_figure(fig, inputs.cfg, STEM)
    return gaps


_CAP = (
    "Is the prompts' attention term an input-independent bias? Left: the share of the prompt keys' "
    "contribution to the attention update that one mean vector explains (‖c̄‖² / E‖c_i‖²; 1 = pure bias), per "
    "layer, for vision prompts (queries CLS+patches or CLS only) and text prompt slots (later tokens or EOS), "
    "with zero-shot CLIP's SOS token as reference. Middle: the contribution's size relative to the whole "
    "attention update. Right: norms of the learned bias vectors (bias tuning) and prompts."
)


def _items(cfg: dict[str, Any]) -> list[Item]:
    return [
        Item(STEM, "Bias decomposition", _CAP),
        Item(
            STEM,
            "Bias decomposition — numbers",
            "Summary over layers (the CSV has every layer).",
            kind="table",
        ),
    ]


def _outputs(cfg: dict[str, Any]):
    return [*figure_paths(cfg, STEM), paths.table_file(f"{STEM}.csv"), paths.table_file(f"{STEM}.md")]


@register("bias_decomposition", "Bias decomposition", _items, _outputs, order=70)
def render_bias_decomposition(inputs: Inputs) -> list[Gap]:
    df = tidy(inputs)
    gaps = _draw(inputs, df)
    write_csv(paths.table_file(f"{STEM}.csv"), df)
    write_text(paths.table_file(f"{STEM}.md"), markdown(df, gaps))
    return gaps
