"""Aggregate per-seed metrics: mean ± std and a 95% interval per dataset × method, plus OPTIMAL.

    promptbias aggregate

Reads ``metrics/<ds>/<method>/seed<S>.json`` for every dataset × method × seed of the sweep (and the
sensitivity grid when enabled). ``*_std`` is the population standard deviation over seeds (numpy's
default, as CoOp's ``parse_test_res.py`` reports); ``*_ci95`` is the half-width of a Student-t 95%
interval (sample std, n−1 degrees of freedom). OPTIMAL is the prompt configuration (``prompt`` and the
grid's ``prompt-d<D>-n<N>``) with the best mean *validation* accuracy; the test-selected one is reported
beside it, as the paper did. Missing runs are listed, not fatal.

With the base2novel protocol the class views (``<ds>-base``, ``<ds>-novel``) are aggregated like
datasets (their own entries; OPTIMAL is the few-shot sweep's only); render pairs them into base / novel / HM.

Writes ``metrics/<ds>/<method>.json`` per dataset × method — the DVC metrics: mean test accuracy
(``acc``), its std, macro and val accuracy, the number of seeds; one short row each in ``dvc metrics
show`` — plus ``metrics/summary.json`` (every statistic, OPTIMAL, missing runs; read by render) and
``results/tables/summary.csv`` (tidy rows).
"""

from __future__ import annotations

import math
from typing import Any

import click

from promptbias import paths
from promptbias.config import RunContext

# Student-t 0.975 quantiles for 1..30 degrees of freedom (normal beyond).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip


def mean_std_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean, population std, and the t-based 95% CI half-width (nan for a single value)."""
    n = len(values)
    mean = sum(values) / n
    pop_std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    if n < 2:
        return mean, pop_std, float("nan")
    sample_std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    return mean, pop_std, t * sample_std / math.sqrt(n)


def collect(cfg: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """All per-seed metrics records of the sweep (+ grid), and the paths that are missing."""
    from promptbias.io import read_json
    from promptbias.pipeline.spec import evaluate_matrix

    records, missing = [], []
    for w in evaluate_matrix(cfg):
        path = paths.metrics_json(w["dataset"], w["method"], w["seed"])
        if path.is_file():
            records.append(read_json(path))
        else:
            missing.append(str(path))
    return records, missing


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    summary: dict[str, Any] = {}
    for (d, m), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        entry: dict[str, Any] = {
            "dataset": d,
            "method": m,
            "n_seeds": len(rs),
            "seeds": [r["seed"] for r in rs],
        }
        for key in ("accuracy", "macro_accuracy", "val_accuracy"):
            values = [r[key] for r in rs if r.get(key) is not None and not math.isnan(r[key])]
            if values:
                mean, std, ci = mean_std_ci(values)
                entry |= {
                    f"{key}_mean": round(mean, 4),
                    f"{key}_std": round(std, 4),
                    f"{key}_ci95": round(ci, 4),
                }
        entry["diverged_seeds"] = [r["seed"] for r in rs if r.get("status") == "diverged"]
        summary[f"{d}/{m}"] = entry
    return summary


def optimal(summary: dict[str, Any]) -> dict[str, Any]:
    """Per dataset: the prompt configuration chosen on validation accuracy, and the test-chosen one."""
    from promptbias.protocols import parse

    best: dict[str, Any] = {}
    # the few-shot sweep's datasets: a base-to-novel class view is compared in its own table, not selected on
    datasets = sorted({e["dataset"] for e in summary.values() if parse(e["dataset"])[1] is None})
    for d in datasets:
        candidates = [
            e
            for e in summary.values()
            if e["dataset"] == d and e["method"].startswith("prompt") and "accuracy_mean" in e
        ]
        if not candidates:
            continue
        by_val = max(candidates, key=lambda e: (e.get("val_accuracy_mean", float("-inf")), -len(e["method"])))
        by_test = max(candidates, key=lambda e: (e["accuracy_mean"], -len(e["method"])))
        best[d] = {
            "val_selected": by_val["method"],
            "val_selected_accuracy_mean": by_val["accuracy_mean"],
            "val_selected_accuracy_std": by_val["accuracy_std"],
            "test_selected": by_test["method"],
            "test_selected_accuracy_mean": by_test["accuracy_mean"],
            "test_selected_accuracy_std": by_test["accuracy_std"],
            "n_candidates": len(candidates),
        }
    return best


# The DVC metric of one dataset × method: short keys, two decimals, so that `dvc metrics show` on the
# demo fits an 80-column terminal. Everything else (CIs, seeds, OPTIMAL) is in metrics/summary.json.
METRIC_KEYS = {
    "acc": "accuracy_mean",
    "std": "accuracy_std",
    "macro": "macro_accuracy_mean",
    "val": "val_accuracy_mean",
}


def method_metrics(entry: dict[str, Any] | None) -> dict[str, Any]:
    """``{acc, std, macro, val, seeds}`` of one summary entry; a statistic with no value is left out."""
    entry = entry or {}
    out = {short: round(entry[key], 2) for short, key in METRIC_KEYS.items() if entry.get(key) is not None}
    return out | {"seeds": entry.get("n_seeds", 0)}


def aggregate(cfg: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd

    from promptbias.io import write_csv, write_json
    from promptbias.pipeline.spec import method_pairs

    records, missing = collect(cfg)
    summary = summarise(records)
    result = {"runs": summary, "optimal": optimal(summary), "missing": missing}
    for dataset, method in method_pairs(cfg):
        write_json(
            paths.method_metrics_json(dataset, method), method_metrics(summary.get(f"{dataset}/{method}"))
        )
    write_json(paths.SUMMARY_JSON, result)
    table = pd.DataFrame(list(summary.values())).drop(columns=["seeds", "diverged_seeds"], errors="ignore")
    write_csv(paths.SUMMARY_CSV, table)
    return result


@click.command("aggregate")
@click.pass_obj
def aggregate_command(ctx: RunContext) -> None:
    """Mean ± std and 95% CI over seeds; OPTIMAL prompt configuration (validation-selected)."""
    from promptbias.pipeline.bind import bind_job

    bind_job(ctx, ctx.config, "aggregate")
    result = aggregate(ctx.config)
    click.echo(f"aggregated {len(result['runs'])} dataset×method groups into {paths.SUMMARY_JSON}")
    if result["missing"]:
        click.echo(
            f"note: {len(result['missing'])} metrics files missing, e.g. {result['missing'][0]}", err=True
        )
