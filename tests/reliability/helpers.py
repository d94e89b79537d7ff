"""Shared helpers of the reliability suite: subprocess environment, file snapshots, output checks.

env = sub_env(PROMPTBIAS_FAULT="checkpoint.pt:kill")     # single-threaded, with a fault hook
proc = popen_cli(ws, env, "train", "--dataset", "demo_shapes", ...)
before = snapshot(ws.path); ...; assert snapshot(ws.path) == before   # nothing written
assert_outputs_parse(ws.path)                            # no truncated / half-written output
"""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.workspace import Workspace, strict_json

# keys whose values are wall-clock measurements (differ between any two runs, interrupted or not)
TIMING_KEYS = frozenset(
    {"seconds", "images_per_second", "wall_seconds_this_process", "train_seconds", "eval_images_per_second"}
)


def sub_env(**extra: str) -> dict[str, str]:
    """The environment for promptbias subprocesses: one thread each, no GPU, plus ``extra``."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    env.pop("PROMPTBIAS_FAULT", None)
    env.update(extra)
    return env


def cli_argv(ws: Workspace, *args: str) -> list[str]:
    """The real console entry (``python -m promptbias.cli``) with the workspace's params."""
    return [sys.executable, "-m", "promptbias.cli", "--params", str(ws.params), *args]


def popen_cli(ws: Workspace, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """Start a promptbias command in the workspace (stdout+stderr captured together)."""
    return subprocess.Popen(
        cli_argv(ws, *args), cwd=ws.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def run_cli(
    ws: Workspace, env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run a promptbias command in the workspace to completion (stdout and stderr apart)."""
    return subprocess.run(
        cli_argv(ws, *args),
        cwd=ws.path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_for(predicate: Any, proc: subprocess.Popen | None = None, timeout: float = 300) -> bool:
    """Poll ``predicate`` every 20 ms until it holds (True), the process ends or time runs out (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return bool(predicate())
        time.sleep(0.02)
    return False


def snapshot(root: Path) -> dict[str, tuple[str, str]]:
    """Every path under ``root`` → (kind, content digest / link target); directories included."""
    out: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir", "")
            else:
                out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def describe_diff(before: dict[str, Any], after: dict[str, Any]) -> str:
    """New, removed and changed paths between two snapshots (for assertion messages)."""
    new = sorted(set(after) - set(before))
    gone = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"new={new[:8]} removed={gone[:8]} changed={changed[:8]}"


def is_atomic_temp(path: Path) -> bool:
    """A temporary of ``promptbias.io.atomic_path`` (``.<target>.<random><suffix>``), never an output."""
    return path.name.startswith(".") and path.name.count(".") >= 2


def assert_outputs_parse(root: Path, folders: tuple[str, ...] = ("runs", "metrics")) -> list[Path]:
    """Every output file under ``folders`` parses completely; returns leftover atomic temporaries.

    JSON, safetensors, torch checkpoints (weights_only), DVCLive TSV and curve CSV (equal column counts), .npy.
    """
    import torch
    from safetensors.torch import load_file

    temps: list[Path] = []
    for folder in folders:
        base = root / folder
        if not base.exists():
            continue
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            if path.name == ".gitignore":  # written by DVC for its outputs
                continue
            if is_atomic_temp(path):
                temps.append(path)
                continue
            try:
                if path.suffix == ".json":
                    strict_json(path)
                elif path.suffix == ".safetensors":
                    load_file(str(path))
                elif path.suffix == ".pt":
                    torch.load(path, map_location="cpu", weights_only=True)
                elif path.suffix in (".tsv", ".csv"):  # DVCLive's logs, the training curve
                    delimiter = "\t" if path.suffix == ".tsv" else ","
                    rows = list(csv.reader(path.read_text().splitlines(), delimiter=delimiter))
                    assert rows and all(len(r) == len(rows[0]) for r in rows), "ragged table"
                    assert path.read_text().endswith("\n"), "last line is cut"
                elif path.suffix == ".npy":
                    np.load(path)
                else:
                    raise AssertionError(f"unexpected output file type {path}")
            except Exception as exc:
                raise AssertionError(f"{path} does not parse: {exc!r}") from exc
    return temps


def without_timing(obj: Any) -> Any:
    """``obj`` (nested dicts/lists) without wall-clock keys."""
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


def one_error_line(err: str, names: tuple[str, ...], fix_marks: tuple[str, ...] = ("—", " - ")) -> str:
    """The one non-blank stderr line of a refused command: starts with ``error:``, gives a fix (one of
    ``fix_marks`` separates it) and names every one of ``names``; returns it."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    line = lines[0]
    assert line.startswith("error:"), line
    assert any(mark in line for mark in fix_marks), f"no fix given: {line}"
    for name in names:
        assert name in line, f"{name!r} not named in: {line}"
    return line
