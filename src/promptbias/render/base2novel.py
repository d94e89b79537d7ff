"""Base-to-novel generalisation (CoCoOp's protocol): base / novel / HM per dataset and method, and the
probes on base- vs novel-class inputs.

    promptbias render --only base2novel
    # results/tables/base2novel.{md,csv}, results/tables/base2novel_probes.{md,csv} (protocols: base2novel)

Base and novel are the mean test accuracies over seeds of the class views ``<ds>-base`` and
``<ds>-novel`` (metrics/summary.json, :mod:`promptbias.protocols`); HM = 2·B·N/(B+N) of those means, and
the AVERAGE row takes the mean base and novel over the datasets and their HM — how CoCoOp's Table 1
reports it. Published values (:data:`promptbias.render.paper.PUBLISHED_BASE2NOVEL`) stand beside ours
with the paper and table they come from. The probe table compares the same learned tensors on base- and
novel-class test images: the share of the prompts' attention update that is one constant vector (the bias
decomposition, Eq. 12) and the EOS row's attention on the prompt slots (Fig. 4). Without the protocol
the renderer writes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from promptbias import paths, protocols
from promptbias.io import write_csv, write_text
from promptbias.render.inputs import Inputs, select
from promptbias.render.paper import PUBLISHED_BASE2NOVEL, display_name
from promptbias.render.registry import Gap, Item, register

STEM, PROBES_STEM = "base2novel", "base2novel_probes"
NOT_RUN = "not run"


def harmonic_mean(base: float | None, novel: float | None) -> float | None:
    """2·B·N/(B+N) (0 when both are 0); None when either is missing."""
    if base is None or novel is None:
        return None
    return 2 * base * novel / (base + novel) if base + novel > 0 else 0.0


@dataclass
class Row:
    dataset: str  # a dataset name, or "AVERAGE"
    method: str
    base: float | None = None
    base_std: float | None = None
    novel: float | None = None
    novel_std: float | None = None
    n_seeds: int | None = None
    published: tuple[float, float, float, str] | None = None

    @property
    def hm(self) -> float | None:
        return harmonic_mean(self.base, self.novel)


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


def build_rows(inputs: Inputs) -> list[Row]:
    """One row per dataset × method, then an AVERAGE row per ``sweep.methods`` method over the sweep datasets
    that have both views."""
    rows = []
    for dataset, method in _pairs(inputs.cfg):
        b = inputs.run(protocols.view_id(dataset, protocols.BASE), method)
        n = inputs.run(protocols.view_id(dataset, protocols.NOVEL), method)
        seeds = [int(e["n_seeds"]) for e in (b, n) if e and e.get("n_seeds")]
        rows.append(
            Row(dataset, method, _stat(b, "accuracy_mean"), _stat(b, "accuracy_std"), _stat(n, "accuracy_mean"),
                _stat(n, "accuracy_std"), min(seeds) if seeds else None, PUBLISHED_BASE2NOVEL.get((dataset, method)))
        )  # fmt: skip
    for method in dict.fromkeys(m for _, m in _pairs(inputs.cfg)):
        if method not in inputs.cfg["sweep"]["methods"]:  # a grid id runs on the sensitivity datasets only
            continue
        have = [r for r in rows if r.method == method and r.dataset in inputs.datasets and r.hm is not None]
        if not have:
            continue
        avg = Row("AVERAGE", method, published=None)
        avg.base = sum(r.base for r in have) / len(have)  # type: ignore[misc]
        avg.novel = sum(r.novel for r in have) / len(have)  # type: ignore[misc]
        avg.n_seeds = min(r.n_seeds or 0 for r in have) or None
        if {r.dataset for r in have} >= set(_PAPER_DATASETS):  # the published average is over the 11 datasets
            avg.published = PUBLISHED_BASE2NOVEL.get(("AVERAGE", method))
        rows.append(avg)
    return rows


_PAPER_DATASETS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                   "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")  # fmt: skip


def _fmt(x: float | None, std: float | None = None) -> str:
    if x is None:
        return NOT_RUN
    return f"{x:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def markdown(rows: list[Row]) -> str:
    lines = [
        "# Base-to-novel generalisation (CoCoOp's protocol)",
        "",
        "Top-1 test accuracy (%), mean ± std over seeds. Each dataset's classes are split in half by label "
        "order (base = the first ceil(n/2), as CoCoOp's `subsample_classes`); every method is tuned on the "
        "16-shot base classes and tested on the base test images with the base class names and on the novel "
        "test images with the novel class names; HM = harmonic mean of base and novel. AVERAGE: mean base and "
        "novel over the sweep datasets, then their HM. *published* = the value the cited paper reports.",
        "",
        "| Dataset | Method | Base | Novel | HM | published B / N / HM | source |",
        "|:---|:---|---:|---:|---:|---:|:---|",
    ]
    for r in rows:
        label = "**AVERAGE**" if r.dataset == "AVERAGE" else display_name(r.dataset)
        pub = r.published
        lines.append(
            f"| {label} | {r.method} | {_fmt(r.base, r.base_std)} | {_fmt(r.novel, r.novel_std)} | "
            f"{_fmt(r.hm)} | {f'{pub[0]:.2f} / {pub[1]:.2f} / {pub[2]:.2f}' if pub else ''} | "
            f"{pub[3] if pub else ''} |"
        )
    return "\n".join(lines) + "\n"


def frame(rows: list[Row]):
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "dataset": r.dataset,
                "method": r.method,
                "base_mean": r.base,
                "base_std": r.base_std,
                "novel_mean": r.novel,
                "novel_std": r.novel_std,
                "hm": r.hm,
                "n_seeds": r.n_seeds,
                "published_base": r.published[0] if r.published else None,
                "published_novel": r.published[1] if r.published else None,
                "published_hm": r.published[2] if r.published else None,
                "published_source": r.published[3] if r.published else "",
            }
            for r in rows
        ]
    )


# -- probes on base- vs novel-class inputs -------------------------------------------------------------
PROBE_QUANTITIES = (  # (label, probe kind, branch, variant, key)
    ("explained share, vision prompts", "bias_decomposition", "vision", "prompt_tokens", "explained_share"),
    ("explained share, text prompts", "bias_decomposition", "text", "prompt_tokens", "explained_share"),
    ("EOS attention on prompt slots", "attention_stats", "text", "eos_row", "prompt"),
    ("EOS attention on the category", "attention_stats", "text", "eos_row", "category"),
)


def _layer_mean(df: Any, branch: str, variant: str, key: str) -> float | None:
    if df is None:
        return None
    rows = select(df, branch, variant, key)
    rows = rows[(rows["layer"] >= 0) & (rows["head"] == -1)]
    return float(rows["value"].mean()) if len(rows) else None


def probe_rows(inputs: Inputs) -> list[dict[str, Any]]:
    """Per sweep dataset × probed method × quantity: its value on base- and on novel-class inputs."""
    rows = []
    for dataset in inputs.datasets:
        for method in inputs.probe_methods:
            for label, kind, branch, variant, key in PROBE_QUANTITIES:
                values = {}
                for view in protocols.VIEWS:
                    df, _ = inputs.probe(protocols.view_id(dataset, view), method, kind)
                    values[view] = _layer_mean(df, branch, variant, key)
                if all(v is None or v == 0 for v in values.values()):  # not run, or no such tokens
                    continue
                rows.append({"dataset": dataset, "method": method, "quantity": label, **values})
    return rows


def probes_markdown(rows: list[dict[str, Any]]) -> str:
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
            f"| {display_name(r['dataset'])} | {r['method']} | {r['quantity']} | {cells[0]} | {cells[1]} | {diff} |"
        )
    if not rows:
        lines.append("| — | — | no probe table of a class view yet | | | |")
    return "\n".join(lines) + "\n"


def _enabled(cfg: dict[str, Any]) -> bool:
    return protocols.enabled(cfg, protocols.BASE2NOVEL)


def _items(cfg: dict[str, Any]) -> list[Item]:
    if not _enabled(cfg):
        return []
    return [
        Item(STEM, "Base-to-novel generalisation", "Base / novel / HM test accuracy per dataset and method "
             "(CoCoOp's protocol), with published values where the cited paper gives them.", kind="table"),
        Item(PROBES_STEM, "Probes on base- vs novel-class inputs", "The bias decomposition and the EOS "
             "attention shares of the base-tuned tensors on base- and on novel-class test images.", kind="table"),
    ]  # fmt: skip


def _outputs(cfg: dict[str, Any]):
    if not _enabled(cfg):
        return []
    return [paths.table_file(f"{stem}.{ext}") for stem in (STEM, PROBES_STEM) for ext in ("md", "csv")]


@register("base2novel", "Base-to-novel", _items, _outputs, order=12)
def render_base2novel(inputs: Inputs) -> list[Gap]:
    if not _enabled(inputs.cfg):
        return []
    rows = build_rows(inputs)
    write_csv(paths.table_file(f"{STEM}.csv"), frame(rows))
    write_text(paths.table_file(f"{STEM}.md"), markdown(rows))
    probes = probe_rows(inputs)
    import pandas as pd

    columns = ["dataset", "method", "quantity", *protocols.VIEWS]
    write_csv(paths.table_file(f"{PROBES_STEM}.csv"), pd.DataFrame(probes, columns=columns))
    write_text(paths.table_file(f"{PROBES_STEM}.md"), probes_markdown(probes))
    return [
        Gap(f"Base-to-novel / {display_name(r.dataset)} / {r.method}", "base or novel view not run")
        for r in rows
        if r.dataset != "AVERAGE" and r.hm is None
    ]
