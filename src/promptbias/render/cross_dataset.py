"""Cross-dataset transfer (CoCoOp's protocol): the source's few-shot tensors on every other sweep dataset.

    promptbias render --only cross_dataset     # results/tables/cross_dataset.{md,csv} (protocols: cross_dataset)

Per target: zero-shot CLIP (the target's own sweep run) and each method tuned on ``cross_dataset.source``
(its few-shot runs on all the source's classes) evaluated with the target's class names — the views
``<target>-from_<source>`` of :mod:`promptbias.protocols`; the source row is the methods on the source
itself. Mean ± std over seeds from metrics/summary.json; AVERAGE = the mean over the targets. A
dataset-specific shift should help on the source and not carry over: the gain over zero-shot on the
targets is set beside the gain on the source. No published values are entered yet (none were checked
against their paper); the table says so. Without the protocol the renderer writes nothing.
"""

from __future__ import annotations

from typing import Any

from promptbias import paths, protocols
from promptbias.config import method_trains
from promptbias.io import write_csv, write_text
from promptbias.render.inputs import Inputs
from promptbias.render.paper import display_name
from promptbias.render.registry import Gap, Item, register

STEM = "cross_dataset"
NOT_RUN = "not run"


def _enabled(cfg: dict[str, Any]) -> bool:
    return protocols.enabled(cfg, protocols.CROSS_DATASET)


def methods(cfg: dict[str, Any]) -> list[str]:
    """The transferred methods: the trained ones of sweep.methods."""
    return [m for m in cfg["sweep"]["methods"] if method_trains(m)]


def build_rows(inputs: Inputs) -> list[dict[str, Any]]:
    """The source row, one row per target, then AVERAGE over the targets: zero-shot and each method."""
    cfg = inputs.cfg
    source = cfg["cross_dataset"]["source"]
    rows = []

    def acc(dataset: str, method: str) -> tuple[float | None, float | None]:
        entry = inputs.run(dataset, method)
        return (None, None) if entry is None else (float(entry["accuracy_mean"]), entry.get("accuracy_std"))

    src = {"dataset": source, "role": "source", "zeroshot": acc(source, "zeroshot")}
    rows.append(src | {m: acc(source, m) for m in methods(cfg)})
    for target in inputs.datasets:
        if target == source:
            continue
        view = protocols.transfer_id(target, source)
        rows.append({"dataset": target, "role": "target", "zeroshot": acc(target, "zeroshot")}
                    | {m: acc(view, m) for m in methods(cfg)})  # fmt: skip
    targets = [r for r in rows if r["role"] == "target"]
    avg: dict[str, Any] = {"dataset": "AVERAGE", "role": "targets"}
    for m in ["zeroshot", *methods(cfg)]:
        have = [r[m][0] for r in targets if r[m][0] is not None]
        avg[m] = (sum(have) / len(have), None) if have and len(have) == len(targets) else (None, None)
    return [*rows, avg]


def gains(rows: list[dict[str, Any]], method: str) -> tuple[float | None, float | None]:
    """(gain over zero-shot on the source, mean gain over zero-shot on the targets) of ``method`` (pp)."""
    src = rows[0]
    on_source = None if None in (src[method][0], src["zeroshot"][0]) else src[method][0] - src["zeroshot"][0]
    diffs = [r[method][0] - r["zeroshot"][0] for r in rows if r["role"] == "target"
             and r[method][0] is not None and r["zeroshot"][0] is not None]  # fmt: skip
    return on_source, (sum(diffs) / len(diffs) if diffs else None)


def _fmt(cell: tuple[float | None, Any]) -> str:
    mean, std = cell
    if mean is None:
        return NOT_RUN
    return f"{mean:.2f}" + (f" ± {float(std):.2f}" if isinstance(std, int | float) else "")


def markdown(inputs: Inputs, rows: list[dict[str, Any]]) -> str:
    ms = methods(inputs.cfg)
    source = display_name(rows[0]["dataset"])
    lines = [
        "# Cross-dataset transfer (CoCoOp's protocol)",
        "",
        f"Top-1 test accuracy (%), mean ± std over seeds. Each method is tuned on {source} (all its classes, "
        f"{inputs.cfg['data']['shots']} shots: the few-shot sweep's runs) and its tensors are evaluated on every other "
        "dataset with that dataset's class names; CLIP = zero-shot on the dataset. No published values are "
        "entered (none has been checked against its paper yet).",
        "",
        "| Dataset | role | CLIP | " + " | ".join(m.upper() for m in ms) + " |",
        "|:---|:---|---:|" + "---:|" * len(ms),
    ]
    for r in rows:
        label = "**AVERAGE** (targets)" if r["dataset"] == "AVERAGE" else display_name(r["dataset"])
        lines.append(f"| {label} | {r['role']} | " + " | ".join(_fmt(r[m]) for m in ["zeroshot", *ms]) + " |")
    lines.append("")
    for m in ms:
        on_source, on_targets = gains(rows, m)
        if on_source is not None and on_targets is not None:
            lines.append(
                f"- {m.upper()}: {on_source:+.2f} pp over CLIP on {source}, {on_targets:+.2f} pp on the targets (mean)"
            )
    return "\n".join(lines) + "\n"


def frame(inputs: Inputs, rows: list[dict[str, Any]]):
    import pandas as pd

    out = []
    for r in rows:
        rec: dict[str, Any] = {"dataset": r["dataset"], "role": r["role"]}
        for m in ["zeroshot", *methods(inputs.cfg)]:
            rec[f"{m}_mean"], rec[f"{m}_std"] = r[m]
        out.append(rec)
    return pd.DataFrame(out)


def _items(cfg: dict[str, Any]) -> list[Item]:
    if not _enabled(cfg):
        return []
    return [Item(STEM, "Cross-dataset transfer", "Each method tuned on the source dataset, evaluated with its "
                 "tensors on the other datasets (their class names), beside zero-shot CLIP.", kind="table")]  # fmt: skip


def _outputs(cfg: dict[str, Any]):
    if not _enabled(cfg):
        return []
    return [paths.table_file(f"{STEM}.{ext}") for ext in ("md", "csv")]


@register("cross_dataset", "Cross-dataset transfer", _items, _outputs, order=13)
def render_cross_dataset(inputs: Inputs) -> list[Gap]:
    if not _enabled(inputs.cfg):
        return []
    rows = build_rows(inputs)
    write_csv(paths.table_file(f"{STEM}.csv"), frame(inputs, rows))
    write_text(paths.table_file(f"{STEM}.md"), markdown(inputs, rows))
    return [
        Gap(f"Cross-dataset / {display_name(r['dataset'])} / {m}", "not run")
        for r in rows[:-1]
        for m in ["zeroshot", *methods(inputs.cfg)]
        if r[m][0] is None
    ]
