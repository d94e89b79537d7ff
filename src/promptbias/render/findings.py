"""The findings table: each finding the paper states, measured on this run, with its threshold and verdict.

    promptbias render --only findings     # results/tables/findings.{md,csv}; the report shows it first
    rows = build(inputs)                  # [Finding(…, value=…, verdict="yes" | "no" | NOT_MEASURED), …]

Every number comes from metrics/summary.json (accuracies) or the probe tables of this run; the thresholds
are ``render.findings`` (their defaults, those of params.yaml, are stated in the table). A finding whose
inputs this run does not produce (a dataset not in the sweep, a probe not run, data no dataset has) says
"not measured in this run" and why — never a guess. Probe findings read the ``prompt`` run (the one
Figs. 4–6 draw) against the frozen CLIP rows of the same probe (the zero-shot run when those are absent),
and average over the sweep datasets that have the table (per-layer values: mean over layers of the
head mean).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from promptbias import paths
from promptbias.io import write_csv, write_text
from promptbias.render.inputs import Inputs, head_mean_by_layer, layer_mean, select
from promptbias.render.registry import Gap, Item, register

STEM = "findings"
YES, NO, NOT_MEASURED = "yes", "no", "not measured in this run"
PROMPT = "prompt"  # the run the probe findings read (Figs. 4–6 draw it too)
DEFAULTS: dict[str, Any] = {  # params.yaml's render.findings (a test holds the two equal)
    "bias_vs_prompt_min_pp": 0.0,
    "uninformative_datasets": ["eurosat", "demo_textures"],
    "uninformative_min_pp": 5.0,
    "eos_shift_min": 0.05,
    "category_max_change": 0.05,
    "distance_entropy_max_rel": 0.10,
    "rotation_min_corr": 0.5,
    "bias_min_explained": 0.5,
}


@dataclass
class Finding:
    """One row: the paper's claim, what was measured, the threshold and whether this run reproduces it."""

    key: str
    claim: str
    quantity: str
    threshold: str  # e.g. "≥ +0.00 pp (bias_vs_prompt_min_pp; default 0.0)"
    value: float | None = None  # the headline number (None: not measured)
    measured: str = ""  # the headline number(s), formatted
    verdict: str = NOT_MEASURED
    detail: str = ""  # per dataset, or why it was not measured
    gaps: list[Gap] = field(default_factory=list)  # missing inputs (for the report's gap list)


def _t(cfg: dict[str, Any], name: str) -> Any:
    return cfg["render"]["findings"][name]


def _threshold(cfg: dict[str, Any], name: str, text: str) -> str:
    return f"{text} (`{name}`; default {DEFAULTS[name]})"


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _verdict(ok: bool) -> str:
    return YES if ok else NO


# -- accuracy findings (metrics/summary.json) ---------------------------------------------------


def _gain(inputs: Inputs, dataset: str) -> float | None:
    """BIAS − PROMPT mean test accuracy (pp) on ``dataset``; None when either was not run."""
    bias, prompt = inputs.run(dataset, "bias"), inputs.run(dataset, "prompt")
    if bias is None or prompt is None:
        return None
    return float(bias["accuracy_mean"]) - float(prompt["accuracy_mean"])


def _bias_vs_prompt(inputs: Inputs) -> Finding:
    cfg = inputs.cfg
    f = Finding(
        "bias_vs_prompt",
        "Bias tuning matches or beats prompt tuning at equal parameters (Table 1: +1.7 pp on average)",
        "BIAS − PROMPT test accuracy (pp), mean over the sweep datasets",
        _threshold(cfg, "bias_vs_prompt_min_pp", f"≥ {_t(cfg, 'bias_vs_prompt_min_pp'):+.2f} pp"),
    )
    gains = {d: g for d in inputs.datasets if (g := _gain(inputs, d)) is not None}
    if not gains:
        f.detail = "no sweep dataset has both a bias and a prompt result in metrics/summary.json"
        f.gaps.append(Gap("Findings / bias vs prompt", f.detail))
        return f
    f.value = _mean(list(gains.values()))
    f.measured = f"{f.value:+.2f} pp"
    f.verdict = _verdict(f.value >= _t(cfg, "bias_vs_prompt_min_pp"))
    wins = sum(g >= 0 for g in gains.values())
    f.detail = f"bias ≥ prompt on {wins} of {len(gains)}: " + "; ".join(
        f"{d} {g:+.2f}" for d, g in gains.items()
    )
    return f


def _uninformative(inputs: Inputs) -> Finding:
    cfg = inputs.cfg
    names = list(_t(cfg, "uninformative_datasets"))
    f = Finding(
        "uninformative_names",
        "The gain is large on the dataset with uninformative class names (EuroSAT: +14.8 pp)",
        f"BIAS − PROMPT test accuracy (pp) on {', '.join(names) or 'no dataset'}",
        _threshold(cfg, "uninformative_min_pp", f"≥ {_t(cfg, 'uninformative_min_pp'):+.2f} pp"),
    )
    present = [d for d in names if d in inputs.datasets]
    if not present:
        f.detail = (
            f"none of {', '.join(names) or '(render.findings.uninformative_datasets is empty)'} is in "
            "sweep.datasets — add one (the demo's is demo_textures) to measure it"
        )
        return f
    gains = {d: g for d in present if (g := _gain(inputs, d)) is not None}
    if not gains:
        f.detail = f"{', '.join(present)}: bias or prompt not run (metrics/summary.json)"
        f.gaps.append(Gap("Findings / uninformative names", f.detail))
        return f
    f.value = _mean(list(gains.values()))
    f.measured = f"{f.value:+.2f} pp"
    f.verdict = _verdict(f.value >= _t(cfg, "uninformative_min_pp"))
    others = [g for d in inputs.datasets if d not in names and (g := _gain(inputs, d)) is not None]
    f.detail = "; ".join(f"{d} {g:+.2f}" for d, g in gains.items()) + (
        f"; the other datasets {_mean(others):+.2f} on average" if others else ""
    )
    return f


# -- probe findings -------------------------------------------------------------------------------


def _per_dataset(
    inputs: Inputs, kind: str, measure: Callable[[Any, str], dict[str, float] | None]
) -> tuple[dict[str, dict[str, float]], list[str], list[Gap]]:
    """``measure(table, dataset)`` on the prompt run's ``kind`` table of every sweep dataset."""
    values, missing, gaps = {}, [], []
    for dataset in inputs.datasets:
        df, _ = inputs.probe(dataset, PROMPT, kind)
        got = measure(df, dataset) if df is not None else None
        if got is None:
            gap = inputs.probe_gap(dataset, PROMPT, kind) if df is None else None
            why = gap.why if gap else "the table lacks the rows"
            missing.append(f"{dataset}: {why}")
            gaps += [Gap(f"Findings / {gap.what}", gap.why)] if gap else []
            continue
        values[dataset] = got
    return values, missing, gaps


def _clip_rows(inputs: Inputs, df: Any, dataset: str, kind: str, branch: str, clip: str, fallback: str):
    """(table, variant) of the frozen CLIP: the prompt run's ``clip`` rows, else the zero-shot run's."""
    if len(select(df, branch, clip)):
        return df, clip
    zs, _ = inputs.probe(dataset, "zeroshot", kind)
    return zs, fallback


def _summarise(f: Finding, values: dict[str, dict[str, float]], missing: list[str], fmt: str) -> None:
    """Mean of each measured quantity over datasets into ``f.measured``; per dataset into ``f.detail``."""
    names = list(next(iter(values.values())))
    means = {n: _mean([v[n] for v in values.values()]) for n in names}
    f.measured = ", ".join(f"{n} {means[n]:{fmt}}" for n in names)
    f.detail = "; ".join(f"{d}: " + ", ".join(f"{n} {v[n]:{fmt}}" for n in names) for d, v in values.items())
    if missing:
        f.detail += ("; " if f.detail else "") + "not measured on " + "; ".join(missing)


def _eos_shift(inputs: Inputs) -> Finding:
    cfg = inputs.cfg
    shift, cat = _t(cfg, "eos_shift_min"), _t(cfg, "category_max_change")
    f = Finding(
        "eos_attention",
        "Text prompts move EOS attention from SOS to themselves; attention to the category stays (Fig. 4)",
        "change of the EOS row's attention share (prompted − CLIP; mean over layers, head mean): "
        "ΔSOS, Δprompt slots, Δcategory",
        _threshold(cfg, "eos_shift_min", f"ΔSOS ≤ −{shift:.2f} and Δprompt ≥ +{shift:.2f}")
        + "; "
        + _threshold(cfg, "category_max_change", f"abs(Δcategory) ≤ {cat:.2f}"),
    )

    def measure(df: Any, dataset: str) -> dict[str, float] | None:
        clip_df, clip_variant = _clip_rows(inputs, df, dataset, "attention_stats", "text", "clip_eos_row",
                                           "eos_row")  # fmt: skip
        out = {}
        for group, name in (("sos", "ΔSOS"), ("prompt", "Δprompt"), ("category", "Δcategory")):
            a = layer_mean(df, "text", "eos_row", group)
            b = layer_mean(clip_df, "text", clip_variant, group) if clip_df is not None else None
            if a is None or b is None:
                return None
            out[name] = a - b
        return out

    values, missing, f.gaps = _per_dataset(inputs, "attention_stats", measure)
    if not values:
        f.detail = "; ".join(missing)
        return f
    _summarise(f, values, missing, "+.3f")
    m = {n: _mean([v[n] for v in values.values()]) for n in ("ΔSOS", "Δprompt", "Δcategory")}
    f.value = m["ΔSOS"]
    f.verdict = _verdict(m["ΔSOS"] <= -shift and m["Δprompt"] >= shift and abs(m["Δcategory"]) <= cat)
    return f


def _foreground(inputs: Inputs) -> Finding:
    return Finding(
        "cls_foreground",
        "With prompts, CLS relevancy concentrates on the foreground object (Fig. 3, Sec. 1)",
        "share of the CLS row's relevancy on foreground patches",
        "—",
        detail="no dataset of this pipeline ships foreground masks, and the relevancy probe keeps the CLS row "
        "per patch averaged over images, not per image against a mask — so there is nothing to measure it on",
    )


def _distance_entropy(inputs: Inputs) -> Finding:
    cfg = inputs.cfg
    tol = _t(cfg, "distance_entropy_max_rel")
    f = Finding(
        "distance_entropy",
        "Prompts leave the vision tower's attention distance and entropy nearly unchanged (Fig. 5)",
        "relative change abs(W/O Prompt − CLIP) / CLIP per layer (head mean), mean over layers: "
        "distance, entropy",
        _threshold(cfg, "distance_entropy_max_rel", f"both ≤ {tol:.2f}"),
    )

    def rel(kind: str, key: str, clip: str, wo: str, fallback: str) -> Callable[[Any, str], float | None]:
        def one(df: Any, dataset: str) -> float | None:
            clip_df, clip_variant = _clip_rows(inputs, df, dataset, kind, "vision", clip, fallback)
            if clip_df is None:
                return None
            a, b = (
                head_mean_by_layer(t, "vision", variant, key).set_index("layer")["value"]
                for t, variant in ((df, wo), (clip_df, clip_variant))
            )
            common = a.index.intersection(b.index)
            if not len(common):
                return None
            return float(((a[common] - b[common]).abs() / b[common].abs()).mean())

        return one

    distance = rel("attention_distance", "mad_px", "clip", "wo_prompt", "wo_prompt")
    entropy = rel("attention_entropy", "entropy", "clip_all_rows", "wo_prompt_all_rows", "all_rows")
    d_values, d_missing, d_gaps = _per_dataset(
        inputs, "attention_distance", lambda df, ds: _wrap("distance", distance(df, ds))
    )
    e_values, e_missing, e_gaps = _per_dataset(
        inputs, "attention_entropy", lambda df, ds: _wrap("entropy", entropy(df, ds))
    )
    f.gaps = d_gaps + e_gaps
    values = {d: {**d_values[d], **e_values[d]} for d in d_values if d in e_values}
    missing = [*d_missing, *e_missing]
    if not values:
        f.detail = "; ".join(missing)
        return f
    _summarise(f, values, missing, ".3f")
    m = {n: _mean([v[n] for v in values.values()]) for n in ("distance", "entropy")}
    f.value = max(m.values())
    f.verdict = _verdict(f.value <= tol)
    return f


def _wrap(name: str, value: float | None) -> dict[str, float] | None:
    return None if value is None else {name: value}


def _rotation(inputs: Inputs) -> Finding:
    cfg = inputs.cfg
    low = _t(cfg, "rotation_min_corr")
    f = Finding(
        "rotation",
        "Prompt–patch similarity maps follow a rotated image (Fig. 6)",
        "correlation of each rotation's prompt similarity map, rotated back, with the rotation-0 map "
        "(mean over layers, rotations and images)",
        _threshold(cfg, "rotation_min_corr", f"≥ {low:.2f}"),
    )
    values, missing, f.gaps = _per_dataset(
        inputs, "maps", lambda df, ds: _wrap("corr", layer_mean(df, "vision", "prompt", "rotation_corr"))
    )
    if not values:
        f.detail = "; ".join(missing) + (
            " (probes.rotations needs an angle besides 0)" if len(cfg["probes"]["rotations"]) < 2 else ""
        )
        return f
    _summarise(f, values, missing, ".3f")
    f.value = _mean([v["corr"] for v in values.values()])
    f.verdict = _verdict(f.value >= low)
    return f


def _bias(inputs: Inputs) -> Finding:
    cfg = inputs.cfg
    low = _t(cfg, "bias_min_explained")
    f = Finding(
        "bias_decomposition",
        "The prompts' attention update is mostly its mean over tokens, i.e. a bias (Sec. 3.2.1, Eq. 12)",
        "explained share ‖c̄‖² / E‖cᵢ‖² of the prompt keys' contribution to the other tokens "
        "(mean over layers): vision, text",
        _threshold(cfg, "bias_min_explained", f"both ≥ {low:.2f}"),
    )

    def measure(df: Any, dataset: str) -> dict[str, float] | None:
        v = layer_mean(df, "vision", "prompt_tokens", "explained_share")
        t = layer_mean(df, "text", "prompt_tokens", "explained_share")
        return None if v is None or t is None else {"vision": v, "text": t}

    values, missing, f.gaps = _per_dataset(inputs, "bias_decomposition", measure)
    if not values:
        f.detail = "; ".join(missing)
        return f
    _summarise(f, values, missing, ".3f")
    f.value = min(_mean([v[n] for v in values.values()]) for n in ("vision", "text"))
    f.verdict = _verdict(f.value >= low)
    return f


FINDINGS: tuple[Callable[[Inputs], Finding], ...] = (
    _bias_vs_prompt,
    _uninformative,
    _eos_shift,
    _foreground,
    _distance_entropy,
    _rotation,
    _bias,
)


def _novel_transfer(inputs: Inputs) -> Finding:
    """Base-to-novel (protocols: base2novel): does bias tuning carry over to unseen classes better than prompts?"""
    from promptbias.protocols import NOVEL, view_id

    f = Finding(
        "novel_transfer",
        "A class-independent shift (the dataset bias) carries over to classes never tuned on: bias tuning's "
        "novel-class accuracy is at least prompt tuning's (base-to-novel protocol)",
        "BIAS − PROMPT novel-class test accuracy (pp), mean over the sweep datasets (tuned on the base classes)",
        "≥ +0.00 pp (the sign: better or worse)",
    )
    gains = {d: g for d in inputs.datasets if (g := _gain(inputs, view_id(d, NOVEL))) is not None}
    if not gains:
        f.detail = "no sweep dataset has both a bias and a prompt result on its novel classes"
        f.gaps.append(Gap("Findings / novel-class transfer", f.detail))
        return f
    f.value = _mean(list(gains.values()))
    f.measured = f"{f.value:+.2f} pp ({'better' if f.value >= 0 else 'worse'} than prompts)"
    f.verdict = _verdict(f.value >= 0)
    f.detail = "; ".join(f"{d} {g:+.2f}" for d, g in gains.items())
    return f


def _dataset_transfer(inputs: Inputs) -> Finding:
    """Cross-dataset (protocols: cross_dataset): a dataset-specific shift should not carry over to other datasets."""
    from promptbias.render import cross_dataset

    source = inputs.cfg["cross_dataset"]["source"]
    f = Finding(
        "dataset_transfer",
        f"A dataset-specific shift (the dataset bias) does not carry over to other datasets: bias tuned on "
        f"{source} gains less over CLIP on the other datasets than on {source} (cross-dataset protocol)",
        f"BIAS − CLIP test accuracy (pp): mean over the other sweep datasets (tuned on {source}); on {source}",
        "targets < source",
    )
    rows = cross_dataset.build_rows(inputs)
    on_source, on_targets = cross_dataset.gains(rows, "bias")
    if on_source is None or on_targets is None:
        f.detail = f"bias or zero-shot not run on {source} or on its targets"
        f.gaps.append(Gap("Findings / cross-dataset transfer", f.detail))
        return f
    f.value = on_targets
    f.measured = f"targets {on_targets:+.2f} pp, source {on_source:+.2f} pp"
    f.verdict = _verdict(on_targets < on_source)
    f.detail = "; ".join(
        f"{r['dataset']} {r['bias'][0] - r['zeroshot'][0]:+.2f}"
        for r in rows
        if r["role"] == "target" and r["bias"][0] is not None and r["zeroshot"][0] is not None
    )
    return f


def build(inputs: Inputs) -> list[Finding]:
    """Every finding, measured on what this run wrote (in the paper's order; then the protocols' own)."""
    from promptbias.protocols import BASE2NOVEL, CROSS_DATASET, enabled

    extra = [_novel_transfer] if enabled(inputs.cfg, BASE2NOVEL) else []
    extra += [_dataset_transfer] if enabled(inputs.cfg, CROSS_DATASET) else []
    return [measure(inputs) for measure in (*FINDINGS, *extra)]


# -- writers -------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def markdown(rows: list[Finding]) -> str:
    verdicts = [r.verdict for r in rows]
    lines = [
        "# Findings of the paper, measured on this run",
        "",
        f"{verdicts.count(YES)} of {len(rows)} reproduced, {verdicts.count(NO)} not reproduced, "
        f"{verdicts.count(NOT_MEASURED)} not measured in this run. Thresholds are `render.findings` "
        "(defaults in brackets); probe findings compare the `prompt` run with the frozen CLIP and average "
        "over the sweep datasets.",
        "",
        "| Finding (paper) | Measured quantity | This run | Threshold | Reproduced? | Per dataset / why |",
        "|:---|:---|---:|:---|:---|:---|",
    ]
    for r in rows:
        verdict = f"**{r.verdict}**" if r.verdict == NO else r.verdict
        lines.append(
            "| "
            + " | ".join(
                _cell(c) for c in (r.claim, r.quantity, r.measured or "—", r.threshold, verdict, r.detail)
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def frame(rows: list[Finding]):
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "finding": r.key,
                "claim": r.claim,
                "quantity": r.quantity,
                "value": r.value,
                "measured": r.measured,
                "threshold": r.threshold,
                "verdict": r.verdict,
                "detail": r.detail,
            }
            for r in rows
        ]
    )


def _items(cfg: dict[str, Any]) -> list[Item]:
    return [
        Item(
            STEM,
            "Findings — does this run reproduce the paper's claims?",
            "Each finding the paper states, the quantity measured here from the metrics and probe tables, the "
            "threshold (render.findings) and the verdict; a finding whose inputs this run does not produce says "
            "so and why.",
            kind="table",
        )
    ]


def _outputs(cfg: dict[str, Any]):
    return [paths.table_file(f"{STEM}.{ext}") for ext in ("md", "csv")]


@register("findings", "Findings", _items, _outputs, order=5)
def render_findings(inputs: Inputs) -> list[Gap]:
    rows = build(inputs)
    write_csv(paths.table_file(f"{STEM}.csv"), frame(rows))
    write_text(paths.table_file(f"{STEM}.md"), markdown(rows))
    return list({str(g): g for r in rows for g in r.gaps}.values())
