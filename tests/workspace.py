"""A throw-away promptbias workspace on the demo world with the tiny CLIP (fast CPU tests).

ws = Workspace.create(tmp_path, datasets=["demo_shapes"])
ws.cli("train", "--dataset", "demo_shapes", "--method", "bias", "--seed", "1")   # in-process
ws.run("train", ...)                                                              # subprocess
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from click.testing import CliRunner

from promptbias.cli import cli

REPO = Path(__file__).resolve().parents[1]

TINY_OVERRIDES = {
    "model": {"name": "promptbias-tiny", "pretrained": None, "precision": "fp32"},
    "device": "cpu",
    "data": {"root": "data", "shots": 4, "cache_images": True, "num_workers": 0},
    "train": {"epochs": 3, "batch_size": 8},
    "methods": {
        "prompt": {"lr": 0.01, "n_ctx_text": 1, "n_ctx_vision": 1, "depth_text": 2, "depth_vision": 2},
        "bias": {"lr": 0.01, "depth_text": 2, "depth_vision": 2},
    },
}


@dataclass
class Workspace:
    path: Path
    params: Path

    @classmethod
    def create(
        cls, path: Path, datasets: list[str], seeds: list[int] = (1,), overrides: dict | None = None
    ) -> Workspace:
        from promptbias.config import deep_merge

        base = yaml.safe_load((REPO / "params.yaml").read_text())
        cfg = deep_merge(base, TINY_OVERRIDES)
        cfg = deep_merge(cfg, {"sweep": {"datasets": datasets, "seeds": list(seeds)}})
        cfg = deep_merge(cfg, overrides or {})
        path.mkdir(parents=True, exist_ok=True)
        _dvc_init(path)  # a project checkout is a DVC repository (the project ships .dvc/)
        params = path / "params.yaml"
        params.write_text(yaml.safe_dump(cfg, sort_keys=False))
        ws = cls(path, params)
        for d in datasets:
            ws.cli("fetch", d)
            for s in seeds:
                ws.cli("split", d, "--shots", str(cfg["data"]["shots"]), "--seed", str(s))
        return ws

    def copy(self, dest: Path) -> Workspace:
        shutil.copytree(self.path, dest)
        return Workspace(dest, dest / "params.yaml")

    def cli(self, *args: str, expect: int = 0) -> str:
        old = os.getcwd()
        os.chdir(self.path)
        try:
            result = CliRunner().invoke(cli, ["--params", str(self.params), *args], catch_exceptions=True)
        finally:
            os.chdir(old)
        if result.exit_code != expect:
            raise AssertionError(
                f"promptbias {' '.join(args)} exited {result.exit_code}:\n{result.output}\n{result.exception!r}"
            )
        return result.output

    def run(
        self, *args: str, env_extra: dict[str, str] | None = None, **kwargs
    ) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "promptbias.cli", "--params", str(self.params), *args]
        env = _env(**(env_extra or {}))
        return subprocess.run(cmd, cwd=self.path, capture_output=True, text=True, env=env, **kwargs)

    def popen(self, *args: str, fault: str | None = None) -> subprocess.Popen:
        """Start the CLI; ``fault`` sets PROMPTBIAS_FAULT (see promptbias.io.atomic_path)."""
        cmd = [sys.executable, "-m", "promptbias.cli", "--params", str(self.params), *args]
        env = _env(**({"PROMPTBIAS_FAULT": fault} if fault else {}))
        return subprocess.Popen(
            cmd, cwd=self.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )


def strict_json(path: Path) -> object:
    """Parse ``path`` as strict JSON: Python's lenient ``NaN``/``Infinity`` literals are an error, as they are
    for DVC, jq and every other JSON reader of the metrics."""

    def refuse(literal: str) -> None:
        raise ValueError(f"{path}: non-standard JSON literal {literal}")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


def _dvc_init(path: Path) -> None:
    import contextlib
    import io

    from dvc.repo import Repo

    with contextlib.redirect_stdout(io.StringIO()):
        Repo.init(str(path), no_scm=True).close()


def _env(**extra: str) -> dict[str, str]:
    """Subprocess environment: one thread, so results are bit-identical across processes (the float
    reduction order depends on the thread count) and tiny models run fast on a shared machine."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}
