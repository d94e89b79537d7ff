"""The HTML report: every figure (PNG embedded as base64, PDF linked) and table with its caption.

    promptbias render --only report      # results/report.html from whatever results/ holds now

Self-contained (one file, no external assets). Items come from the registry in report order; a file
that does not exist is shown as a marked gap, and the gaps the renderers reported are listed on top.
"""

from __future__ import annotations

import base64
import html
import re
from typing import Any

from promptbias import paths
from promptbias.io import provenance, write_text
from promptbias.render.registry import Gap, Item, ordered, register

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;margin-top:.4em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:right}th:first-child,td:first-child{text-align:left}
thead th{border-bottom:2px solid #444}
.gap{color:#b00020;font-weight:600}.gaps{background:#fff5f5;border:1px dashed #b00020;padding:.6em 1em}
.meta{color:#666;font-size:.85em}code{background:#f4f4f4;padding:0 .2em}
"""


def md_to_html(md: str) -> str:
    """The small Markdown subset our tables use: headings, paragraphs, bullet lists, pipe tables, **, `."""
    out, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(_table(block))
            continue
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 2, 6)
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
    text = re.sub(r"\*(.+?)\*", r"<em>\1</em>", text)
    return text.replace("not run", '<span class="gap">not run</span>')


def _table(block: list[str]) -> str:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block]
    head, body = rows[0], [r for r in rows[2:]]
    h = "".join(f"<th>{_inline(c)}</th>" for c in head)
    b = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"


def _figure(item: Item, cfg: dict[str, Any]) -> str:
    png = paths.figure_file(item.stem, "png")
    if not png.is_file():
        return f'<p class="gap">{html.escape(item.title)}: not rendered ({png} missing)</p>'
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    links = " · ".join(
        f'<a href="figures/{item.stem}.{fmt}">{fmt.upper()}</a>'
        for fmt in cfg.get("render", {}).get("formats", ["png", "pdf"])
        if paths.figure_file(item.stem, fmt).is_file()
    )
    return (
        f'<figure id="{item.stem}"><img alt="{html.escape(item.title)}" src="data:image/png;base64,{data}">'
        f"<figcaption><strong>{html.escape(item.title)}.</strong> {html.escape(item.caption)} "
        f'<span class="meta">[{links}]</span></figcaption></figure>'
    )


def _table_item(item: Item) -> str:
    md = paths.table_file(f"{item.stem}.md")
    if not md.is_file():
        return f'<p class="gap">{html.escape(item.title)}: not rendered ({md} missing)</p>'
    links = " · ".join(
        f'<a href="tables/{item.stem}.{ext}">{ext.upper()}</a>'
        for ext in ("md", "csv", "tex")
        if paths.table_file(f"{item.stem}.{ext}").is_file()
    )
    return (
        f'<div id="{item.stem}-table"><p><strong>{html.escape(item.title)}.</strong> {html.escape(item.caption)} '
        f'<span class="meta">[{links}]</span></p>{md_to_html(_without_title(md.read_text()))}</div>'
    )


def _without_title(markdown: str) -> str:
    """A table file's text without its own ``# title`` line: the report already titles the item."""
    lines = markdown.splitlines()
    return "\n".join(lines[1:] if lines and lines[0].startswith("# ") else lines)


def build(cfg: dict[str, Any], gaps: dict[str, list[Gap]]) -> str:
    prov = provenance()
    sections, toc = [], []
    for r in ordered():
        if r.name == "report":
            continue
        items = r.items(cfg)
        if not items:  # a protocol's renderer with the protocol off: no section
            continue
        body = "\n".join(_table_item(it) if it.kind == "table" else _figure(it, cfg) for it in items)
        toc.append(f'<li><a href="#sec-{r.name}">{html.escape(r.title)}</a></li>')
        sections.append(f'<section id="sec-{r.name}"><h2>{html.escape(r.title)}</h2>\n{body}</section>')
    all_gaps = [g for name in gaps for g in gaps[name]]
    gap_html = (
        '<div class="gaps"><strong class="gap">Not run yet (marked gaps in the figures and tables):</strong><ul>'
        + "".join(f"<li>{html.escape(str(g))}</li>" for g in all_gaps)
        + "</ul></div>"
        if all_gaps
        else ""
    )
    sweep = cfg["sweep"]
    meta = (
        f"model <code>{html.escape(str(cfg['model']['name']))}</code> ({html.escape(str(cfg['model'].get('pretrained')))}), "
        f"datasets {html.escape(', '.join(sweep['datasets']))}; methods {html.escape(', '.join(sweep['methods']))}; "
        f"seeds {html.escape(', '.join(str(s) for s in sweep['seeds']))}. "
        f"git <code>{html.escape(str(prov.get('git_sha') or 'unknown'))}</code>, rendered {html.escape(prov['created'])}."
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>promptbias — results report</title>"
        f"<style>{CSS}</style></head><body>\n"
        "<h1>Understanding the multi-modal prompts of CLIP — reproduction report</h1>\n"
        f'<p class="meta">{meta}</p>\n{gap_html}\n<ul>{"".join(toc)}</ul>\n'
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


@register("report", "HTML report", lambda cfg: [], lambda cfg: [paths.REPORT], order=1000)
def render_report(inputs: Any) -> list[Gap]:
    write_text(paths.REPORT, build(inputs.cfg, getattr(inputs, "gaps", {})))
    return []
