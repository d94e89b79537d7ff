"""The ``promptbias render`` command: figures, tables and the HTML report under results/.

    promptbias render                           # every renderer, then results/report.html
    promptbias render --only table1 --only fig5 # a subset (the report is rebuilt unless --no-report)
    promptbias render --list                    # renderer names and the files each writes

Reads only metrics/ (summary.json and per-seed files), probes/ and the images the maps name under
data/raw/; recomputes nothing. A missing input is a marked gap (a "NOT RUN" panel, a "not run" cell),
never an error. A renderer that fails on malformed input leaves marked placeholders for its files and is
reported on stderr (``--debug`` re-raises).
"""

from __future__ import annotations

from typing import Any

import click

from promptbias.errors import UserError

FAILED = "renderer failed"  # how a crashed renderer's gap begins


@click.command("render")
@click.option(
    "--only", "only", multiple=True, metavar="NAME", help="Render only these (repeatable; see --list)."
)
@click.option("--skip", "skip", multiple=True, metavar="NAME", help="Skip these renderers (repeatable).")
@click.option("--no-report", is_flag=True, help="Do not rebuild results/report.html.")
@click.option(
    "--list", "list_only", is_flag=True, help="List the renderers and their output files, then exit."
)
@click.pass_obj
def render(ctx: Any, only: tuple[str, ...], skip: tuple[str, ...], no_report: bool, list_only: bool) -> None:
    """Draw Table 1, the figures and plots, and the HTML report.

    Table 1, Figs. 2–6 and the sensitivity and bias-decomposition plots, from what the aggregate and the
    probes wrote; a missing input is a marked gap in the figure, the table and the report.
    """
    from promptbias.pipeline.bind import bind_job
    from promptbias.render.catalog import ordered

    cfg = ctx.config
    bind_job(ctx, cfg, "render")
    names = [r.name for r in ordered()]
    unknown = sorted((set(only) | set(skip)) - set(names))
    if unknown:
        raise UserError(f"render: unknown renderer(s) {', '.join(unknown)} — choose from {', '.join(names)}")
    if list_only:
        for r in ordered():
            click.echo(f"{r.name:20s} {r.title}")
            for path in r.outputs(cfg):
                click.echo(f"    {path}")
        return
    chosen = [n for n in names if (not only or n in only) and n not in skip]
    if "report" in chosen and no_report:
        chosen.remove("report")
    if only and not no_report and "report" not in chosen and "report" not in skip:
        chosen.append("report")
    gaps = run_renderers(cfg, chosen, debug=bool(getattr(ctx, "debug", False)))
    failed = [name for name, marked in gaps.items() if any(g.why.startswith(FAILED) for g in marked)]
    if failed:  # the others were drawn and the failure is marked in the report, but the job did fail
        raise UserError(
            f"render: {len(failed)} renderer(s) failed ({', '.join(failed)}) — see the lines above; "
            "rerun with --debug for the traceback"
        )


def run_renderers(cfg: dict[str, Any], names: list[str], debug: bool = False) -> dict[str, list[Any]]:
    """Run the named renderers in report order; returns the gaps each marked."""
    from promptbias.render.catalog import ordered
    from promptbias.render.inputs import Inputs
    from promptbias.render.registry import Gap

    inputs = Inputs(cfg)
    for r in ordered():
        if r.name not in names:
            continue
        try:
            gaps = r.draw(inputs)
        except Exception as exc:
            if debug:
                raise
            _raise_if_disk_full(exc)  # no renderer can draw on a full disk: one line, exit 2
            reason = f"{FAILED}: {type(exc).__name__}: {exc}"
            click.echo(f"render {r.name}: {reason} (rerun with --debug for the traceback)")
            gaps = [Gap(r.title, reason)]
            _placeholders(cfg, r.outputs(cfg), reason)
        inputs.gaps[r.name] = list(gaps)
        written = sum(1 for p in r.outputs(cfg) if p.is_file())
        note = f", {len(gaps)} gap(s)" if gaps else ""
        click.echo(f"render {r.name}: {written} file(s){note}")
    if inputs.summary is None:
        click.echo("render: metrics/summary.json missing — run `promptbias aggregate` first")
    return inputs.gaps


def _raise_if_disk_full(exc: Exception) -> None:
    """A full disk (ENOSPC/EDQUOT, raised here or behind an atomic write's one-line error) ends the command
    with that one line: marking a gap per renderer would print a failure for each and write nothing."""
    import errno

    from promptbias.io import disk_full_error

    for cause in (exc, exc.__cause__, exc.__context__):
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            if isinstance(exc, UserError):
                raise exc
            raise disk_full_error(cause.filename or "results/") from None


def _placeholders(cfg: dict[str, Any], paths: list[Any], reason: str) -> None:
    """Marked stand-ins for the files of a failed renderer that do not exist (so no output goes missing)."""
    from promptbias.io import write_text
    from promptbias.render.style import gap_figure

    stems_done = set()
    for path in paths:
        if path.is_file():
            continue
        if path.suffix in (".png", ".pdf", ".svg"):
            if path.stem not in stems_done:
                gap_figure(cfg, path.stem, path.stem, reason)
                stems_done.add(path.stem)
        else:
            write_text(path, f"not rendered: {reason}\n")
