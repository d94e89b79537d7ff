"""Base-to-novel generalisation (CoCoOp's protocol): base / novel / HM per dataset and method beside the
published values, and the probes on base- vs novel-class inputs.

    promptbias render --only base2novel
    # results/tables/base2novel.{md,csv}, results/tables/base2novel_probes.{md,csv},
    # results/figures/base2novel_probes.png|pdf (protocols: base2novel)

Base and novel are the mean test accuracies over seeds of the class views ``<ds>-base`` and
``<ds>-novel`` (metrics/summary.json, :mod:`promptbias.protocols`); HM = 2·B·N/(B+N) of those means, and
the AVERAGE row takes the mean base and novel over the datasets and their HM — how CoCoOp's Table 1
reports it. Below our rows of each dataset come the published rows (:data:`promptbias.render.published.
BASE2NOVEL`: CLIP, CoOp, CoCoOp, MaPLe, IVLP under their papers' names, with the table they come from);
the published AVERAGE only when the sweep has all 11 of the papers' datasets. The probe table and figure
(:mod:`promptbias.render.base2novel_probes`) compare the same learned tensors on base- and novel-class
test images. Without the protocol the renderer writes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from promptbias import paths, protocols
from promptbias.io import write_csv, write_text
from promptbias.render import base2novel_probes
from promptbias.render.inputs import Inputs
from promptbias.render.paper import display_name
from promptbias.render.published import BASE2NOVEL, PAPER_DATASETS, Source, cite, value
from promptbias.render.registry import Gap, Item, figure_paths, register

STEM, PROBES_STEM = "base2novel", base2novel_probes.STEM
NOT_RUN = "not run"
AVERAGE = "AVERAGE"


def harmonic_mean(base: float | None, novel: float | None) -> float | None:
    """2·B·N/(B+N) (0 when both are 0); None when either is missing."""
    if base is None or novel is None:
        return None
    return 2 * base * novel / (base + novel) if base + novel > 0 else 0.0


@dataclass
class Row:
    dataset: str  # a dataset name, or "AVERAGE"
    method: str  # our method id, or the published method's name (source set)
    base: float | None = None
    base_std: float | None = None
    novel: float | None = None
    novel_std: float | None = None
    n_seeds: int | None = None
    source: Source | None = None  # a published row: where its values come from
    reported_hm: float | None = None  # a published row's HM as printed (not recomputed from rounded B, N)

    @property
    def hm(self) -> float | None:
        return self.reported_hm if self.reported_hm is not None else harmonic_mean(self.base, self.novel)

    @property
    def published(self) -> bool:
        return self.source is not None


def _pairs(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """(dataset, method) of every evaluated base-to-novel pair, in the evaluate matrix's order."""
    from promptbias.pipeline.spec import evaluate_matrix

    out = []
    for w in evaluate_matrix(cfg):
        dataset, view = protocols.parse(w["dataset"])
        if view == protocols.BASE and (dataset, w["method"]) not in out:
            out.append((dataset, w["method"]))
    return out


def _stat(entry: dict[str, Any] | None, key: str) -> float | None:
    value = (entry or {}).get(key)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def published_rows(dataset: str) -> list[Row]:
    """The published rows for one dataset key (or AVERAGE), in :data:`BASE2NOVEL`'s order."""
    out = []
    for pub in BASE2NOVEL:
        v = value(pub, dataset)
        if v is not None:
            out.append(Row(dataset, pub.method, v[0], None, v[1], None, None, pub.source, v[2]))
    return out


def build_rows(inputs: Inputs) -> list[Row]:
    """Per dataset: one row per method, then the published rows; then an AVERAGE row per ``sweep.methods``
    method over the sweep datasets that have both views, then the published averages."""
    rows: list[Row] = []
    pairs = _pairs(inputs.cfg)
    for i, (dataset, method) in enumerate(pairs):
        b = inputs.run(protocols.view_id(dataset, protocols.BASE), method)
        n = inputs.run(protocols.view_id(dataset, protocols.NOVEL), method)
        seeds = [int(e["n_seeds"]) for e in (b, n) if e and e.get("n_seeds")]
        rows.append(
            Row(dataset, method, _stat(b, "accuracy_mean"), _stat(b, "accuracy_std"), _stat(n, "accuracy_mean"),
                _stat(n, "accuracy_std"), min(seeds) if seeds else None)
        )  # fmt: skip
        if i + 1 == len(pairs) or pairs[i + 1][0] != dataset:  # the dataset's last method
            rows += published_rows(dataset)
    averages = []
    for method in dict.fromkeys(m for _, m in pairs):
        if method not in inputs.cfg["sweep"]["methods"]:  # a grid id runs on the sensitivity datasets only
            continue
        have = [r for r in rows if r.method == method and not r.published and r.dataset in inputs.datasets
                and r.hm is not None]  # fmt: skip
        if have:
            averages.append(
                Row(AVERAGE, method, sum(r.base for r in have) / len(have), None,  # type: ignore[misc]
                    sum(r.novel for r in have) / len(have), None, min(r.n_seeds or 0 for r in have) or None)  # type: ignore[misc]
            )  # fmt: skip
    if averages and set(inputs.datasets) >= set(PAPER_DATASETS):  # the published average is over the 11
        averages += published_rows(AVERAGE)
    return rows + averages


def _fmt(x: float | None, std: float | None = None) -> str:
    if x is None:
        return NOT_RUN
    return f"{x:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def markdown(rows: list[Row]) -> str:
    cited = tuple(r for r in BASE2NOVEL if any(x.source is r.source for x in rows))
    note = (
        "Rows in *italics* are published values of other papers' methods under their own names (not our "
        "runs; our `prompt` is deep independent multi-modal prompting, the IVLP design): "
        + cite(cited)
        + ". A dataset or method without a published value has no such row."
        if cited
        else "No published values: the papers report the 11 real datasets only (none of them is in this sweep)."
    )
    lines = [
        "# Base-to-novel generalisation (CoCoOp's protocol)",
        "",
        "Top-1 test accuracy (%), mean ± std over seeds. Each dataset's classes are split in half by label "
        "order (base = the first ceil(n/2), as CoCoOp's `subsample_classes`); every method is tuned on the "
        "16-shot base classes and tested on the base test images with the base class names and on the novel "
        "test images with the novel class names; HM = harmonic mean of base and novel. AVERAGE: mean base and "
        "novel over the sweep datasets, then their HM (published: over the papers' 11 datasets, shown only "
        "when the sweep has all 11). " + note,
        "",
        "| Dataset | Method | Base | Novel | HM | Source |",
        "|:---|:---|---:|---:|---:|:---|",
    ]
    for r in rows:
        label = f"**{AVERAGE}**" if r.dataset == AVERAGE else display_name(r.dataset)
        method = f"*{r.method}*" if r.published else r.method
        source = r.source.label if r.source else f"this run ({r.n_seeds or 0} seeds)"
        lines.append(
            f"| {label} | {method} | {_fmt(r.base, r.base_std)} | {_fmt(r.novel, r.novel_std)} | {_fmt(r.hm)} | "
            f"{source} |"
        )
    return "\n".join(lines) + "\n"


def frame(rows: list[Row]):
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "dataset": r.dataset,
                "method": r.method,
                "kind": "published" if r.published else "ours",
                "base_mean": r.base,
                "base_std": r.base_std,
                "novel_mean": r.novel,
                "novel_std": r.novel_std,
                "hm": r.hm,
                "n_seeds": r.n_seeds,
                "source": r.source.caption if r.source else "",
            }
            for r in rows
        ]
    )


def _enabled(cfg: dict[str, Any]) -> bool:
    return protocols.enabled(cfg, protocols.BASE2NOVEL)


def _items(cfg: dict[str, Any]) -> list[Item]:
    if not _enabled(cfg):
        return []
    return [
        Item(STEM, "Base-to-novel generalisation", "Base / novel / HM test accuracy per dataset and method "
             "(CoCoOp's protocol), with the published values of CLIP, CoOp, CoCoOp, MaPLe and IVLP where the "
             "cited papers give them.", kind="table"),
        Item(PROBES_STEM, "Probes on base- vs novel-class inputs", base2novel_probes.CAPTION),
        Item(PROBES_STEM, "Probes on base- vs novel-class inputs — numbers", "The bias decomposition and the "
             "EOS attention shares of the base-tuned tensors on base- and on novel-class test images, mean "
             "over layers.", kind="table"),
    ]  # fmt: skip


def _outputs(cfg: dict[str, Any]):
    if not _enabled(cfg):
        return []
    tables = [paths.table_file(f"{stem}.{ext}") for stem in (STEM, PROBES_STEM) for ext in ("md", "csv")]
    return [*tables, *figure_paths(cfg, PROBES_STEM)]


@register("base2novel", "Base-to-novel", _items, _outputs, order=12)
def render_base2novel(inputs: Inputs) -> list[Gap]:
    if not _enabled(inputs.cfg):
        return []
    rows = build_rows(inputs)
    write_csv(paths.table_file(f"{STEM}.csv"), frame(rows))
    write_text(paths.table_file(f"{STEM}.md"), markdown(rows))
    probes = base2novel_probes.probe_rows(inputs)
    import pandas as pd

    columns = ["dataset", "method", "quantity", *protocols.VIEWS]
    write_csv(paths.table_file(f"{PROBES_STEM}.csv"), pd.DataFrame(probes, columns=columns))
    write_text(paths.table_file(f"{PROBES_STEM}.md"), base2novel_probes.markdown(probes))
    gaps = base2novel_probes.draw(inputs)
    return [
        Gap(f"Base-to-novel / {display_name(r.dataset)} / {r.method}", "base or novel view not run")
        for r in rows
        if r.dataset != AVERAGE and not r.published and r.hm is None
    ] + gaps
