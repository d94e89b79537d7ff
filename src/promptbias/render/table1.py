"""Table 1: CLIP / PROMPT / BIAS / OPTIMAL accuracy (mean ± std over seeds) beside the paper's values.

    promptbias render --only table1     # results/tables/table1.{md,csv,tex}

Rows: ``sweep.datasets`` + AVERAGE. Columns: CLIP = ``zeroshot``, PROMPT = the parameter-matched
``prompt``, BIAS = ``bias``, OPTIMAL = the prompt configuration selected on validation accuracy (and, in
a second column, on test accuracy) by ``promptbias aggregate``. Values are copied from
metrics/summary.json (never recomputed); the CSV keeps them unrounded. AVERAGE is the mean over the
datasets that have the column; its std is the population std over seeds of the per-seed average (from
the per-seed metrics files, seeds common to all averaged datasets). A cell that was not run says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from promptbias import paths
from promptbias.io import write_csv, write_text
from promptbias.render.inputs import Inputs
from promptbias.render.paper import PAPER_AVERAGE, PAPER_TABLE1, display_name
from promptbias.render.registry import Gap, Item, register

STEM = "table1"
# (csv prefix, header, paper column, fixed method id or None for the OPTIMAL selections)
COLUMNS: tuple[tuple[str, str, str, str | None], ...] = (
    ("clip", "CLIP", "CLIP", "zeroshot"),
    ("prompt", "PROMPT", "PROMPT", "prompt"),
    ("bias", "BIAS", "BIAS", "bias"),
    ("optimal_val", "OPTIMAL (val-selected)", "OPTIMAL", None),
    ("optimal_test", "OPTIMAL (test-selected)", "OPTIMAL", None),
)
NOT_RUN = "not run"


@dataclass
class Cell:
    method: str | None = None
    mean: float | None = None
    std: float | None = None
    n_seeds: int | None = None
    paper: float | None = None

    @property
    def diff(self) -> float | None:
        return None if self.mean is None or self.paper is None else self.mean - self.paper


@dataclass
class Row:
    dataset: str
    label: str
    cells: dict[str, Cell] = field(default_factory=dict)
    note: str = ""


def build_rows(inputs: Inputs) -> list[Row]:
    rows = [_dataset_row(inputs, d) for d in inputs.datasets]
    return [*rows, _average_row(inputs, rows)]


def _dataset_row(inputs: Inputs, dataset: str) -> Row:
    row = Row(dataset, display_name(dataset))
    paper = PAPER_TABLE1.get(dataset, {})
    best = inputs.optimal(dataset) or {}
    for prefix, _, paper_col, method in COLUMNS:
        if method is None:
            method = best.get("val_selected" if prefix == "optimal_val" else "test_selected")
        entry = inputs.run(dataset, method) if method else None
        cell = Cell(method=method, paper=paper.get(paper_col))
        if entry is not None:
            cell.mean = float(entry["accuracy_mean"])
            cell.std = _num(entry.get("accuracy_std"))
            cell.n_seeds = int(entry.get("n_seeds", 0)) or None
        row.cells[prefix] = cell
    return row


def _average_row(inputs: Inputs, rows: list[Row]) -> Row:
    avg = Row("AVERAGE", "AVERAGE")
    notes = []
    for prefix, header, paper_col, _ in COLUMNS:
        have = [r for r in rows if r.cells[prefix].mean is not None]
        cell = Cell()
        if have:
            cell.mean = sum(r.cells[prefix].mean for r in have) / len(have)
            cell.std = _seed_std(inputs, [(r.dataset, r.cells[prefix].method) for r in have])
            cell.n_seeds = min(r.cells[prefix].n_seeds or 0 for r in have) or None
            names = {r.dataset for r in have}
            if names == set(PAPER_TABLE1):
                cell.paper = PAPER_AVERAGE[paper_col]
            elif names <= set(PAPER_TABLE1):  # like for like: the paper's values over the same datasets
                cell.paper = sum(PAPER_TABLE1[d][paper_col] for d in names) / len(names)
                notes.append(f"{header}: paper value averaged over the same {len(names)} datasets")
            if len(have) < len(rows):
                notes.append(f"{header}: average over {len(have)} of {len(rows)} datasets")
        avg.cells[prefix] = cell
    avg.note = "; ".join(notes)
    return avg


def _seed_std(inputs: Inputs, pairs: list[tuple[str, str | None]]) -> float | None:
    """Population std over seeds of the across-dataset mean (seeds present for every pair)."""
    per_seed: dict[int, list[float]] = {}
    for seed in inputs.cfg["sweep"]["seeds"]:
        accs = [inputs.seed_accuracy(d, m, int(seed)) for d, m in pairs if m]
        if len(accs) == len(pairs) and all(a is not None for a in accs):
            per_seed[int(seed)] = accs
    if not per_seed:
        return None
    means = [sum(v) / len(v) for v in per_seed.values()]
    mu = sum(means) / len(means)
    return math.sqrt(sum((m - mu) ** 2 for m in means) / len(means))


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


# -- writers -------------------------------------------------------------------------------------


def frame(rows: list[Row]):
    import pandas as pd

    records = []
    for r in rows:
        rec: dict[str, Any] = {
            "dataset": r.dataset,
            "paper_dataset": r.label if r.dataset in PAPER_TABLE1 else "",
        }
        missing = []
        for prefix, *_ in COLUMNS:
            c = r.cells[prefix]
            rec |= {
                f"{prefix}_method": c.method or "",
                f"{prefix}_mean": c.mean,
                f"{prefix}_std": c.std,
                f"{prefix}_n_seeds": c.n_seeds,
                f"{prefix}_paper": c.paper,
                f"{prefix}_diff": c.diff,
            }
            if c.mean is None:
                missing.append(prefix)
        rec["status"] = "ok" if not missing else "not run: " + ", ".join(missing)
        rec["note"] = r.note
        records.append(rec)
    return pd.DataFrame(records)


def _fmt(x: float | None, signed: bool = False, digits: int = 2) -> str:
    if x is None:
        return ""
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _ours(c: Cell, pm: str = " ± ") -> str:
    if c.mean is None:
        return NOT_RUN
    return _fmt(c.mean) + (f"{pm}{_fmt(c.std)}" if c.std is not None else "")


def _cells(r: Row, pm: str) -> list[str]:
    out = []
    for prefix in ("clip", "prompt", "bias"):
        c = r.cells[prefix]
        out += [_ours(c, pm), _fmt(c.paper, digits=1), _fmt(c.diff, signed=True)]
    v, t = r.cells["optimal_val"], r.cells["optimal_test"]
    out += [
        _ours(v, pm),
        _ours(t, pm),
        _fmt(v.paper, digits=1),
        _fmt(v.diff, signed=True),
        _fmt(t.diff, signed=True),
    ]
    return out


HEADER = ["Dataset", "CLIP", "paper", "Δ", "PROMPT", "paper", "Δ", "BIAS", "paper", "Δ",
          "OPTIMAL (val)", "OPTIMAL (test)", "paper", "Δ val", "Δ test"]  # fmt: skip


PAPER_COLUMNS = frozenset({"paper", "Δ", "Δ val", "Δ test"})


def markdown(rows: list[Row]) -> str:
    """The markdown table; a *paper* or Δ column only where some dataset has a published value."""
    table = [[f"**{r.label}**" if r.dataset == "AVERAGE" else r.label, *_cells(r, " ± ")] for r in rows]
    keep = [j for j, name in enumerate(HEADER) if name not in PAPER_COLUMNS or any(row[j] for row in table)]
    published = any(HEADER[j] in PAPER_COLUMNS for j in keep)
    lines = [
        "# Table 1 — the importance of the bias",
        "",
        "Top-1 test accuracy (%), mean ± std over seeds; "
        + (
            "*paper* = the published value (Table 1 of the paper), Δ = ours − paper. "
            if published
            else "the paper publishes no values for these datasets. "
        )
        + "OPTIMAL = the best prompt configuration selected on validation (val) or test accuracy."
        + (IMAGENET_VAL if _has_imagenet(rows) else ""),
        "",
        "| " + " | ".join(HEADER[j] for j in keep) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(keep) - 1)) + "|",
    ]
    for row in table:
        lines.append("| " + " | ".join(row[j] for j in keep) + " |")
    lines += ["", *_footnotes(rows, "- ")]
    return "\n".join(lines) + "\n"


IMAGENET_VAL = " ImageNet's val is drawn from its train images outside the few-shot set (its official val is the test set)."


def _has_imagenet(rows: list[Row]) -> bool:
    return any(r.dataset == "imagenet" for r in rows)


def _footnotes(rows: list[Row], bullet: str) -> list[str]:
    notes = []
    for r in rows[:-1]:
        v, t = r.cells["optimal_val"], r.cells["optimal_test"]
        if v.method or t.method:
            notes.append(
                f"{bullet}{r.label}: OPTIMAL val-selected `{v.method or '—'}`, test-selected `{t.method or '—'}`"
            )
    if rows and rows[-1].note:
        notes.append(f"{bullet}AVERAGE: {rows[-1].note}")
    missing = [f"{r.label} ({', '.join(p for p, *_ in COLUMNS if r.cells[p].mean is None)})"
               for r in rows[:-1] if any(r.cells[p].mean is None for p, *_ in COLUMNS)]  # fmt: skip
    if missing:
        notes.append(f"{bullet}not run yet: " + "; ".join(missing))
    return notes


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        s = s.replace(a, b)
    return s


def latex(rows: list[Row]) -> str:
    cols = "l" + "rrr" * 3 + "rrrrr"
    head1 = (r" & \multicolumn{3}{c}{CLIP} & \multicolumn{3}{c}{PROMPT} & \multicolumn{3}{c}{BIAS}"
             r" & \multicolumn{5}{c}{OPTIMAL} \\")  # fmt: skip
    head2 = r"Dataset & ours & paper & $\Delta$ & ours & paper & $\Delta$ & ours & paper & $\Delta$ & val & test & paper & $\Delta$ val & $\Delta$ test \\"
    lines = [
        "% generated by `promptbias render` — do not edit",
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{Validating the importance of bias: top-1 accuracy (\%, mean $\pm$ std over seeds) beside the "
        r"published values; $\Delta$ = ours $-$ paper. OPTIMAL is selected on validation (val) or test accuracy."
        + (IMAGENET_VAL if _has_imagenet(rows) else "")
        + "}",
        r"\label{tab:table1}",
        r"\resizebox{\linewidth}{!}{%",
        rf"\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        head1,
        r"\cmidrule(lr){2-4}\cmidrule(lr){5-7}\cmidrule(lr){8-10}\cmidrule(lr){11-15}",
        head2,
        r"\midrule",
    ]
    for r in rows:
        if r.dataset == "AVERAGE":
            lines.append(r"\midrule")
        cells = [_tex_escape(c).replace("±", r"$\pm$").replace("Δ", r"$\Delta$") for c in _cells(r, " ± ")]
        cells = [r"\textit{not run}" if c == NOT_RUN else c for c in cells]
        lines.append(" & ".join([_tex_escape(r.label), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}"]
    notes = _footnotes(rows, "% ")
    return "\n".join(lines + notes) + "\n"


def _items(cfg: dict[str, Any]) -> list[Item]:
    return [
        Item(
            STEM,
            "Table 1 — validating the importance of the bias",
            "Top-1 test accuracy (%), mean ± std over seeds, for zero-shot CLIP, the parameter-matched prompt "
            "(1 text + 1 vision token in every layer), bias tuning and the best prompt configuration of the "
            "sensitivity grid (selected on validation accuracy; the test-selected one beside it, as the paper "
            "reports), next to the paper's published values and the difference.",
            kind="table",
        )
    ]


def _outputs(cfg: dict[str, Any]):
    return [paths.table_file(f"{STEM}.{ext}") for ext in ("md", "csv", "tex")]


@register("table1", "Table 1", _items, _outputs, order=10)
def render_table1(inputs: Inputs) -> list[Gap]:
    rows = build_rows(inputs)
    df = frame(rows)
    write_csv(paths.table_file(f"{STEM}.csv"), df)
    write_text(paths.table_file(f"{STEM}.md"), markdown(rows))
    write_text(paths.table_file(f"{STEM}.tex"), latex(rows))
    gaps = []
    if inputs.summary is None:
        gaps.append(Gap("Table 1", "metrics/summary.json missing — run `promptbias aggregate`"))
    for r in rows[:-1]:
        missing = [h for p, h, *_ in COLUMNS if r.cells[p].mean is None]
        if missing:
            gaps.append(Gap(f"Table 1 / {r.label}", "not run: " + ", ".join(missing)))
    return gaps
