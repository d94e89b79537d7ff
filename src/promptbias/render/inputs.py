"""Read-only access to what the renderers draw: metrics/summary.json, per-seed metrics, probe tables.

    inputs = Inputs(cfg)
    inputs.run("dtd", "prompt")                    # the summary entry (accuracy_mean, accuracy_std, …) or None
    df, why = inputs.probe("dtd", "prompt", "attention_stats")   # seeds of probes.seeds averaged; None + reason
    arrays, why = inputs.arrays("dtd", "prompt", "maps")

Nothing here computes a metric: tables are only filtered, and values of several probe seeds averaged.
Every reader returns ``None`` with a one-line reason (missing, unreadable, wrong columns) instead of
raising, so a renderer can leave a marked gap.
"""

from __future__ import annotations

import json
import math
from functools import cached_property
from pathlib import Path
from typing import Any

from promptbias import paths
from promptbias.tables import PROBE_COLUMNS

_GROUP = ["branch", "layer", "head", "variant", "key"]


class Inputs:
    """Lazy, cached readers of the render stage's inputs for one config."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self._tables: dict[tuple[str, str, str], tuple[Any, str]] = {}
        self.gaps: dict[str, list[Any]] = {}  # renderer name -> the gaps it marked (for the report)

    # -- config views ---------------------------------------------------------------------------
    @property
    def datasets(self) -> list[str]:
        return list(self.cfg["sweep"]["datasets"])

    @property
    def probe_seeds(self) -> list[int]:
        return [int(s) for s in self.cfg.get("probes", {}).get("seeds", [])]

    @property
    def probe_methods(self) -> list[str]:
        return list(self.cfg.get("probes", {}).get("methods", []))

    @property
    def data_root(self) -> Path:
        return Path(self.cfg.get("data", {}).get("root", "data"))

    # -- metrics --------------------------------------------------------------------------------
    @cached_property
    def summary(self) -> dict[str, Any] | None:
        """metrics/summary.json as written by ``promptbias aggregate`` (None when absent/unreadable)."""
        try:
            data = json.loads(paths.SUMMARY_JSON.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def run(self, dataset: str, method: str) -> dict[str, Any] | None:
        """The aggregated entry of dataset/method with an accuracy (None when not run)."""
        runs = (self.summary or {}).get("runs", {})
        entry = runs.get(f"{dataset}/{method}") if isinstance(runs, dict) else None
        if not isinstance(entry, dict) or not _finite(entry.get("accuracy_mean")):
            return None
        return entry

    def optimal(self, dataset: str) -> dict[str, Any] | None:
        best = (self.summary or {}).get("optimal", {})
        entry = best.get(dataset) if isinstance(best, dict) else None
        return entry if isinstance(entry, dict) else None

    def seed_accuracy(self, dataset: str, method: str, seed: int) -> float | None:
        """Test accuracy of one seed from metrics/<ds>/<method>/seed<S>.json (None when absent)."""
        try:
            value = json.loads(paths.metrics_json(dataset, method, seed).read_text()).get("accuracy")
        except (OSError, ValueError, AttributeError):
            return None
        return float(value) if _finite(value) else None

    # -- probes ---------------------------------------------------------------------------------
    def probe(self, dataset: str, method: str, kind: str):
        """(table, "") with the values of every available probe seed averaged, or (None, reason)."""
        key = (dataset, method, kind)
        if key not in self._tables:
            self._tables[key] = self._read_probe(dataset, method, kind)
        return self._tables[key]

    def _read_probe(self, dataset: str, method: str, kind: str):
        import pandas as pd

        frames, problems = [], []
        for seed in self.probe_seeds or [1]:
            path = paths.probe_file(dataset, method, seed, kind, "parquet")
            if not path.is_file():
                problems.append((seed, "not run"))
                continue
            try:
                df = pd.read_parquet(path)
            except Exception as exc:
                problems.append((seed, f"unreadable ({type(exc).__name__})"))
                continue
            missing = [c for c in PROBE_COLUMNS if c not in df.columns]
            if missing:
                problems.append((seed, f"lacks columns {', '.join(missing)}"))
                continue
            frames.append(df)
        if not frames:
            return None, _reason(problems)
        df = pd.concat(frames, ignore_index=True)
        df = df.astype({"layer": "int64", "head": "int64", "value": "float64"})
        df["branch"] = df["branch"].astype(str)
        df["variant"] = df["variant"].astype(str)
        df["key"] = df["key"].astype(str)
        out = df.groupby(_GROUP, as_index=False, sort=False).agg(value=("value", "mean"), n=("n", "sum"))
        out.attrs["seeds"] = sorted(int(s) for s in df["seed"].unique())
        return out, ""

    def arrays(self, dataset: str, method: str, kind: str) -> tuple[dict[str, Any] | None, str]:
        """The <kind>.npz arrays of the first probe seed that has them, or (None, reason)."""
        import numpy as np

        problems = []
        for seed in self.probe_seeds or [1]:
            path = paths.probe_file(dataset, method, seed, kind, "npz")
            if not path.is_file():
                problems.append((seed, "not run"))
                continue
            try:
                with np.load(path, allow_pickle=False) as z:
                    return {k: z[k] for k in z.files}, ""
            except Exception as exc:
                problems.append((seed, f"unreadable ({type(exc).__name__})"))
        return None, _reason(problems)

    def probe_gap(self, dataset: str, method: str, kind: str, suffix: str = "parquet") -> Any:
        """The marked gap for a probe file that could not be read."""
        from promptbias.render.registry import Gap

        why = (self.arrays(dataset, method, kind) if suffix == "npz" else self.probe(dataset, method, kind))[
            1
        ]
        return Gap(f"probes/{dataset}/{method}/{kind}.{suffix}", why or "no rows")

    def split(self, dataset: str) -> dict[str, Any] | None:
        """data/raw/<ds>.json (to find the images of the maps), or None."""
        try:
            return json.loads(paths.raw_json(self.data_root, dataset).read_text())
        except (OSError, ValueError):
            return None


def _reason(problems: list[tuple[int, str]]) -> str:
    """'not run' when every seed says so; else 'seed1: …; seed2: …'."""
    texts = {text for _, text in problems}
    if len(texts) == 1:
        return texts.pop()
    return "; ".join(f"seed{seed}: {text}" for seed, text in problems) or "not run"


def select(df: Any, branch: str, variant: str, key: str | None = None, layer: int | None = None) -> Any:
    """Rows of one branch/variant (and key/layer); empty frame when df is None."""
    import pandas as pd

    if df is None:
        return pd.DataFrame(columns=[*list(_GROUP), "value", "n"])
    m = (df["branch"] == branch) & (df["variant"] == variant)
    if key is not None:
        m &= df["key"] == key
    if layer is not None:
        m &= df["layer"] == layer
    return df[m]


def head_mean_by_layer(df: Any, branch: str, variant: str, key: str) -> Any:
    """The head-mean rows (head −1, layer ≥ 0) of one key, sorted by layer; empty when absent."""
    rows = select(df, branch, variant, key)
    return rows[(rows["layer"] >= 0) & (rows["head"] == -1)].sort_values("layer")


def layer_mean(df: Any, branch: str, variant: str, key: str) -> float | None:
    """Mean over layers of :func:`head_mean_by_layer`; None when absent (or ``df`` is None)."""
    rows = head_mean_by_layer(df, branch, variant, key)
    return float(rows["value"].mean()) if len(rows) else None


def scalar(df: Any, branch: str, variant: str, key: str) -> float | None:
    rows = select(df, branch, variant, key)
    return float(rows["value"].iloc[0]) if len(rows) else None


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
