"""Cross-dataset transfer and domain generalisation (CoCoOp's protocols): the source's few-shot tensors on
other datasets and on shifted domains of the source, beside the published values.

    promptbias render --only cross_dataset     # results/tables/cross_dataset.{md,csv} (protocols: cross_dataset)

Per target: zero-shot CLIP (the target's own run) and each method tuned on ``cross_dataset.source`` (its
few-shot runs on all the source's classes) evaluated with the target's class names — the views
``<target>-from_<source>`` of :mod:`promptbias.protocols`; the source row is the methods on the source
itself. Mean ± std over seeds from metrics/summary.json. Two blocks, told apart by the view ids alone:
**cross-dataset** targets are the other sweep datasets; **domain generalisation** targets are the
transfer views whose target is not a sweep dataset (the ImageNet variants -V2, -Sketch, -A, -R, views
such as ``imagenet_sketch-from_imagenet``: the source's classes in another domain). Each block has its
AVERAGE row. A dataset-specific shift should help on the source and not carry over: the gain over
zero-shot on the targets is set beside the gain on the source. Published values
(:data:`~promptbias.render.published.CROSS_DATASET`, :data:`~promptbias.render.published.DOMAIN_GENERALISATION`:
CLIP, CoOp, CoCoOp, MaPLe under their own names) are measured with ImageNet as the source and are shown
only when ``cross_dataset.source`` is ImageNet. Without the protocol the renderer writes nothing.
"""

from __future__ import annotations

from typing import Any

from promptbias import paths, protocols
from promptbias.config import method_trains
from promptbias.io import write_csv, write_text
from promptbias.render.inputs import Inputs
from promptbias.render.paper import display_name
from promptbias.render.published import (
    CROSS_DATASET,
    DOMAIN_GENERALISATION,
    IMAGENET_VARIANTS,
    PAPER_DATASETS,
    TRANSFER_SOURCE,
    Published,
    cite,
    value,
    variant_key,
)
from promptbias.render.registry import Gap, Item, register

STEM = "cross_dataset"
NOT_RUN = "not run"
AVERAGE = "AVERAGE"
TARGET, DOMAIN = "target", "domain"  # the roles of a cross-dataset and of a domain-generalisation row
AVERAGE_ROLE = {TARGET: "targets", DOMAIN: "domains"}
PUBLISHED_METHODS = ("CLIP", "CoOp", "CoCoOp", "MaPLe")


def _enabled(cfg: dict[str, Any]) -> bool:
    return protocols.enabled(cfg, protocols.CROSS_DATASET)


def methods(cfg: dict[str, Any]) -> list[str]:
    """The transferred methods: the trained ones of sweep.methods."""
    return [m for m in cfg["sweep"]["methods"] if method_trains(m)]


def transfer_targets(inputs: Inputs) -> list[str]:
    """Every target of the source's transfer views, in the evaluate matrix's order, then any other one
    metrics/summary.json holds (a view id is all it takes)."""
    from promptbias.pipeline.spec import evaluate_matrix

    source = inputs.cfg["cross_dataset"]["source"]
    ids = [w["dataset"] for w in evaluate_matrix(inputs.cfg)]
    ids += [key.split("/")[0] for key in ((inputs.summary or {}).get("runs") or {})]
    out = []
    for dataset_id in ids:
        target, view = protocols.parse(dataset_id)
        if protocols.transfer_source(view) == source and target != source and target not in out:
            out.append(target)
    return out


def domain_targets(inputs: Inputs) -> list[str]:
    """The domain-generalisation targets: transfer targets that are not sweep datasets."""
    return [t for t in transfer_targets(inputs) if t not in inputs.datasets]


def _published(rows: tuple[Published, ...], dataset_id: str, source: str) -> dict[str, float | None]:
    """The published accuracy of each method for a row (ImageNet as the source only)."""
    out: dict[str, float | None] = dict.fromkeys(PUBLISHED_METHODS)
    if source != TRANSFER_SOURCE:
        return out
    for pub in rows:
        v = value(pub, dataset_id)
        out[pub.method] = v[0] if v else None
    return out


def build_rows(inputs: Inputs) -> list[dict[str, Any]]:
    """The source row, one row per cross-dataset target and their AVERAGE, then (when there are any) one
    row per domain-generalisation target and their AVERAGE: zero-shot, each method, the published values."""
    cfg = inputs.cfg
    source = cfg["cross_dataset"]["source"]

    def acc(dataset: str, method: str) -> tuple[float | None, float | None]:
        entry = inputs.run(dataset, method)
        return (None, None) if entry is None else (float(entry["accuracy_mean"]), entry.get("accuracy_std"))

    def row(dataset: str, role: str, zeroshot: tuple, runs_of: str, published: tuple) -> dict[str, Any]:
        return ({"dataset": dataset, "role": role, "zeroshot": zeroshot}
                | {m: acc(runs_of, m) for m in methods(cfg)}
                | {"published": _published(published, runs_of, source)})  # fmt: skip

    rows = [row(source, "source", acc(source, "zeroshot"), source, CROSS_DATASET)]
    for target in inputs.datasets:
        if target != source:
            rows.append(row(target, TARGET, acc(target, "zeroshot"), protocols.transfer_id(target, source),
                            CROSS_DATASET))  # fmt: skip
    rows.append(_average(rows, TARGET, cfg, source, CROSS_DATASET, set(PAPER_DATASETS) - {TRANSFER_SOURCE}))
    domains = domain_targets(inputs)
    for target in domains:
        view = protocols.transfer_id(target, source)
        zeroshot = acc(target, "zeroshot") if inputs.run(target, "zeroshot") else acc(view, "zeroshot")
        rows.append(row(target, DOMAIN, zeroshot, view, DOMAIN_GENERALISATION))
    if domains:
        rows.append(_average(rows, DOMAIN, cfg, source, DOMAIN_GENERALISATION, set(IMAGENET_VARIANTS)))
    return rows


def _average(rows: list[dict[str, Any]], role: str, cfg: dict[str, Any], source: str,
             published: tuple[Published, ...], paper_targets: set[str]) -> dict[str, Any]:  # fmt: skip
    """The mean over a block's rows (only when every row has the value); the published average only when
    the block has all the paper's targets."""
    block = [r for r in rows if r["role"] == role]
    avg: dict[str, Any] = {"dataset": AVERAGE, "role": AVERAGE_ROLE[role]}
    for m in ["zeroshot", *methods(cfg)]:
        have = [r[m][0] for r in block if r[m][0] is not None]
        avg[m] = (sum(have) / len(have), None) if have and len(have) == len(block) else (None, None)
    complete = {variant_key(r["dataset"]) for r in block} >= paper_targets
    avg["published"] = (_published(published, AVERAGE, source) if complete
                        else dict.fromkeys(PUBLISHED_METHODS))  # fmt: skip
    return avg


def gains(rows: list[dict[str, Any]], method: str, role: str = TARGET) -> tuple[float | None, float | None]:
    """(gain over zero-shot on the source, mean gain over zero-shot on the ``role`` rows) of ``method`` (pp)."""
    src = rows[0]
    on_source = None if None in (src[method][0], src["zeroshot"][0]) else src[method][0] - src["zeroshot"][0]
    diffs = [r[method][0] - r["zeroshot"][0] for r in rows if r["role"] == role
             and r[method][0] is not None and r["zeroshot"][0] is not None]  # fmt: skip
    return on_source, (sum(diffs) / len(diffs) if diffs else None)


def _fmt(cell: tuple[float | None, Any]) -> str:
    mean, std = cell
    if mean is None:
        return NOT_RUN
    return f"{mean:.2f}" + (f" ± {float(std):.2f}" if isinstance(std, int | float) else "")


def _block(rows: list[dict[str, Any]], ms: list[str], roles: tuple[str, ...]) -> list[str]:
    """One Markdown table: our columns, then the published columns that have a value in this block."""
    block = [r for r in rows if r["role"] in roles]
    pub = [p for p in PUBLISHED_METHODS if any(r["published"][p] is not None for r in block)]
    head = ["Dataset", "role", "CLIP", *(m.upper() for m in ms), *(f"*{p}* (published)" for p in pub)]
    lines = ["| " + " | ".join(head) + " |", "|:---|:---|" + "---:|" * (len(head) - 2)]
    for r in block:
        label = f"**{AVERAGE}** ({r['role']})" if r["dataset"] == AVERAGE else display_name(r["dataset"])
        cells = [_fmt(r[m]) for m in ["zeroshot", *ms]]
        cells += [f"{r['published'][p]:.2f}" if r["published"][p] is not None else "" for p in pub]
        lines.append(f"| {label} | {r['role']} | " + " | ".join(cells) + " |")
    return lines


def _cited(rows: list[dict[str, Any]], published: tuple[Published, ...], roles: tuple[str, ...]) -> str:
    used = [
        p for p in published if any(r["published"][p.method] is not None for r in rows if r["role"] in roles)
    ]
    if not used:
        return ""
    return ("Published columns: other papers' methods under their own names (not our runs), ImageNet as "
            f"the source: {cite(tuple(used))}.")  # fmt: skip


def markdown(inputs: Inputs, rows: list[dict[str, Any]]) -> str:
    ms = methods(inputs.cfg)
    source = display_name(rows[0]["dataset"])
    is_imagenet = inputs.cfg["cross_dataset"]["source"] == TRANSFER_SOURCE
    xd_cite = _cited(rows, CROSS_DATASET, ("source", TARGET, "targets"))
    lines = [
        "# Cross-dataset transfer (CoCoOp's protocol)",
        "",
        f"Top-1 test accuracy (%), mean ± std over seeds. Each method is tuned on {source} (all its classes, "
        f"{inputs.cfg['data']['shots']} shots: the few-shot sweep's runs) and its tensors are evaluated on every other "
        "dataset with that dataset's class names; CLIP = zero-shot on the dataset. "
        + (xd_cite + " Zero-shot CLIP's published cross-dataset values are not entered (the copies read "
           "disagree in the second decimal). The published AVERAGE is over the papers' 10 targets, shown only "
           "when the sweep has all of them." if xd_cite else
           "No published values: " + ("none of the papers' targets is in this sweep." if is_imagenet else
                                      "the papers' source is ImageNet.")),
        "",
        *_block(rows, ms, ("source", TARGET, "targets")),
    ]  # fmt: skip
    if any(r["role"] == DOMAIN for r in rows):
        dg_cite = _cited(rows, DOMAIN_GENERALISATION, (DOMAIN, "domains"))
        lines += [
            "",
            f"## Domain generalisation ({source} → shifted domains of {source})",
            "",
            f"The same {source} tensors on other domains of {source}'s classes (view "
            f"`<variant>-from_{rows[0]['dataset']}`); CLIP = zero-shot on the variant. "
            + (dg_cite + " The published AVERAGE is over -V2, -Sketch, -A and -R, shown only when all four "
               "are here." if dg_cite else "No published values for these targets."),
            "",
            *_block(rows, ms, (DOMAIN, "domains")),
        ]  # fmt: skip
    lines.append("")
    for m in ms:
        on_source, on_targets = gains(rows, m)
        _, on_domains = gains(rows, m, DOMAIN)
        if on_source is not None and (on_targets is not None or on_domains is not None):
            parts = [f"{on_source:+.2f} pp over CLIP on {source}"]
            parts += [f"{on_targets:+.2f} pp on the other datasets (mean)"] if on_targets is not None else []
            parts += [f"{on_domains:+.2f} pp on the shifted domains (mean)"] if on_domains is not None else []
            lines.append(f"- {m.upper()}: " + ", ".join(parts))
    return "\n".join(lines) + "\n"


def frame(inputs: Inputs, rows: list[dict[str, Any]]):
    import pandas as pd

    out = []
    for r in rows:
        rec: dict[str, Any] = {"dataset": r["dataset"], "role": r["role"]}
        for m in ["zeroshot", *methods(inputs.cfg)]:
            rec[f"{m}_mean"], rec[f"{m}_std"] = r[m]
        for p in PUBLISHED_METHODS:
            rec[f"published_{p.lower()}"] = r["published"][p]
        out.append(rec)
    return pd.DataFrame(out)


def _items(cfg: dict[str, Any]) -> list[Item]:
    if not _enabled(cfg):
        return []
    return [Item(STEM, "Cross-dataset transfer and domain generalisation", "Each method tuned on the source "
                 "dataset, evaluated with its tensors on the other datasets (their class names) and on shifted "
                 "domains of the source where run, beside zero-shot CLIP and the published CLIP, CoOp, CoCoOp "
                 "and MaPLe values.", kind="table")]  # fmt: skip


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
    block = {"source": "Cross-dataset", TARGET: "Cross-dataset", DOMAIN: "Domain generalisation"}
    return [
        Gap(f"{block[r['role']]} / {display_name(r['dataset'])} / {m}", "not run")
        for r in rows
        if r["dataset"] != AVERAGE
        for m in ["zeroshot", *methods(inputs.cfg)]
        if r[m][0] is None
    ]
