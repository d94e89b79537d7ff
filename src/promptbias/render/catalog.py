"""Every renderer, registered by importing its module, and the list of files ``render`` writes.

    from promptbias.render.catalog import RENDERERS, expected_outputs
    expected_outputs(cfg)    # [Path("results/tables/table1.md"), …, Path("results/report.html")]

Add a figure: write ``render/<name>.py`` with an ``@register(...)`` function and import it below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from promptbias.render import (  # noqa: F401  (registration, in report order)
    attention_shares,
    base2novel,
    bias_decomposition,
    cross_dataset,
    distance_entropy,
    findings,
    maps,
    relevancy,
    report,
    runs,
    sensitivity,
    table1,
)
from promptbias.render.registry import RENDERERS, ordered

__all__ = ["RENDERERS", "expected_outputs", "ordered"]


def expected_outputs(cfg: dict[str, Any], names: list[str] | None = None) -> list[Path]:
    """Every file the given renderers (default: all) write for this config, in report order."""
    paths: list[Path] = []
    for r in ordered():
        if names is None or r.name in names:
            paths += [p for p in r.outputs(cfg) if p not in paths]
    return paths
