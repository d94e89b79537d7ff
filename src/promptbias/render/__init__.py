"""Figures, tables and the HTML report (DESIGN.md §1 render): read metrics and probe tables, never recompute.

    promptbias render                      # everything under results/
    promptbias render --only table1 --only fig5
    from promptbias.render import RENDERERS, expected_outputs
    expected_outputs(cfg)                  # every file ``render`` writes for this config (for the workflow)

One module per figure/table registers a :class:`~promptbias.render.registry.Renderer`; adding a figure is
one module plus its import in :mod:`promptbias.render.catalog`.
"""

import matplotlib

matplotlib.use("Agg")  # before any module of the package imports pyplot

from promptbias.render.catalog import RENDERERS, expected_outputs

__all__ = ["RENDERERS", "expected_outputs"]
