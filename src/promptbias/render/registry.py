"""The renderer registry: one :class:`Renderer` per figure or table, declared by the module that draws it.

    @register("fig5", "Fig. 5 — attention distance and entropy",
              items=lambda cfg: [Item("fig5_distance_entropy_dtd", "Fig. 5 — dtd", "caption …")],
              outputs=lambda cfg: figure_paths(cfg, "fig5_distance_entropy_dtd"), order=40)
    def fig5(inputs: Inputs) -> list[Gap]: ...  # draws, saves via style.save_figure, returns its gaps

A renderer gets the :class:`~promptbias.render.inputs.Inputs` (lazy readers of metrics/ and probes/),
writes exactly the files ``outputs(cfg)`` lists and returns the gaps it marked (missing inputs), so the
report can list them. The HTML report runs last and reads what the others wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptbias import paths


@dataclass(frozen=True)
class Item:
    """One figure or table file group shown in the report: a stem, its title and caption."""

    stem: str  # results/figures/<stem>.<fmt> or results/tables/<stem>.<ext>
    title: str
    caption: str
    kind: str = "figure"  # "figure" | "table"


@dataclass
class Gap:
    """A marked gap: what is missing and why (shown in the figure, the table and the report)."""

    what: str
    why: str

    def __str__(self) -> str:
        return f"{self.what}: {self.why}"


@dataclass(frozen=True)
class Renderer:
    name: str
    title: str
    items: Callable[[dict[str, Any]], list[Item]]  # what it produces for a config (report order)
    outputs: Callable[[dict[str, Any]], list[Path]]  # every file it writes for a config
    draw: Callable[[Any], list[Gap]]  # Inputs -> gaps
    order: int = 50


RENDERERS: dict[str, Renderer] = {}


def register(
    name: str,
    title: str,
    items: Callable[[dict[str, Any]], list[Item]],
    outputs: Callable[[dict[str, Any]], list[Path]],
    order: int = 50,
) -> Callable[[Callable[[Any], list[Gap]]], Callable[[Any], list[Gap]]]:
    def deco(fn: Callable[[Any], list[Gap]]) -> Callable[[Any], list[Gap]]:
        RENDERERS[name] = Renderer(name, title, items, outputs, fn, order)
        return fn

    return deco


def figure_formats(cfg: dict[str, Any]) -> list[str]:
    """``render.formats`` with PNG always first (the report embeds PNGs); PNG + PDF by default."""
    formats = list(cfg.get("render", {}).get("formats") or ["png", "pdf"])
    return ["png", *[f for f in dict.fromkeys(formats) if f != "png"]]


def figure_paths(cfg: dict[str, Any], stem: str) -> list[Path]:
    return [paths.figure_file(stem, fmt) for fmt in figure_formats(cfg)]


def per_dataset_figure_paths(stem: str) -> Callable[[dict[str, Any]], list[Path]]:
    """The outputs function of a renderer that draws one figure ``<stem>_<dataset>`` per sweep dataset."""

    def outputs(cfg: dict[str, Any]) -> list[Path]:
        return [p for d in cfg["sweep"]["datasets"] for p in figure_paths(cfg, f"{stem}_{d}")]

    return outputs


def ordered() -> list[Renderer]:
    return sorted(RENDERERS.values(), key=lambda r: (r.order, r.name))
