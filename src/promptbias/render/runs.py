"""Every run at a glance: test accuracy per dataset × method — any registered method, not only Table 1's
columns — and the probe tables each run has, so a method or probe added through the catalog shows up.

    promptbias render --only runs      # results/tables/runs.md + runs.csv

Accuracies are copied from metrics/summary.json (mean ± std over seeds); a probe kind is listed for a
run when its table exists for every probe seed. Nothing is recomputed.
"""

from __future__ import annotations

from typing import Any

from promptbias import paths
from promptbias.io import write_csv, write_text
from promptbias.pipeline.spec import all_datasets, methods_for
from promptbias.render.inputs import Inputs
from promptbias.render.registry import Gap, Item, register

STEM = "runs"
CAPTION = (
    "Test accuracy (%) of every dataset × method of this configuration (mean ± std over seeds, from "
    "metrics/summary.json), and the probe tables that exist for it."
)


def rows(inputs: Inputs) -> list[dict[str, Any]]:
    cfg = inputs.cfg
    out = []
    for dataset in all_datasets(cfg):
        for method in methods_for(cfg, dataset):
            entry = inputs.run(dataset, method) or {}
            probed = dataset in cfg["sweep"]["datasets"] and method in cfg["probes"]["methods"]
            kinds = [k for k in cfg["probes"]["kinds"] if probed and _probed(inputs, dataset, method, k)]
            out.append(
                {
                    "dataset": dataset,
                    "method": method,
                    "accuracy_mean": entry.get("accuracy_mean"),
                    "accuracy_std": entry.get("accuracy_std"),
                    "n_seeds": entry.get("n_seeds"),
                    "probes": " ".join(kinds),
                }
            )
    return out


def _probed(inputs: Inputs, dataset: str, method: str, kind: str) -> bool:
    seeds = inputs.probe_seeds
    return bool(seeds) and all(paths.probe_file(dataset, method, s, kind, "parquet").is_file() for s in seeds)


def markdown(table: list[dict[str, Any]]) -> str:
    lines = ["| dataset | method | accuracy | seeds | probe tables |", "|---|---|---|---|---|"]
    for r in table:
        if r["accuracy_mean"] is None:
            acc = "not run"
        else:
            std = r["accuracy_std"]
            acc = f"{r['accuracy_mean']:.2f}" + (f" ± {std:.2f}" if isinstance(std, int | float) else "")
        lines.append(
            f"| {r['dataset']} | `{r['method']}` | {acc} | {r['n_seeds'] or ''} | {r['probes'] or '—'} |"
        )
    return "\n".join(lines) + "\n"


@register(
    "runs",
    "All runs",
    items=lambda cfg: [Item(STEM, "All runs", CAPTION, kind="table")],
    outputs=lambda cfg: [paths.table_file(f"{STEM}.md"), paths.table_file(f"{STEM}.csv")],
    order=15,
)
def render_runs(inputs: Inputs) -> list[Gap]:
    import pandas as pd

    table = rows(inputs)
    write_csv(
        paths.table_file(f"{STEM}.csv"),
        pd.DataFrame(
            table, columns=["dataset", "method", "accuracy_mean", "accuracy_std", "n_seeds", "probes"]
        ),
    )
    write_text(paths.table_file(f"{STEM}.md"), markdown(table))
    return [
        Gap(f"runs / {r['dataset']} / {r['method']}", "not run") for r in table if r["accuracy_mean"] is None
    ]
