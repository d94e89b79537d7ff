"""Helpers shared by the workflow tests: a scratch copy of the project and the two engines' job lists.

proj = project_copy(tmp_path)                   # Snakefile, workflow/, params.yaml, config/, dvc.yaml
jobs = snakemake_jobs(proj, "all", ["config/demo.yaml"])   # [{rule, input, output, cmd, params, gpu, log}]
stages = dvc_stages(proj / "dvc.yaml")           # {name: {cmd, deps, outs, params}}
run(["dvc", "status"], proj)                     # a tool of the venv, in proj, checked
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROJECT_FILES = (
    "Snakefile",
    "workflow",
    "params.yaml",
    "config",
    "dvc.yaml",
    ".dvc",
    ".dvcignore",
    ".gitignore",
)

_SNAKEMAKE_JOBS = r"""
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, Quietness, ResourceSettings
target, *configfiles = sys.argv[1:]
with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
    wapi = api.workflow(
        resource_settings=ResourceSettings(cores=1, resources={"gpu": 4}),
        config_settings=ConfigSettings(configfiles=[Path(c) for c in configfiles]),
        snakefile=Path("Snakefile").absolute(),
        workdir=Path.cwd(),
    )
    wapi.dag(DAGSettings(targets={target}, forceall=True))
    wf = wapi._workflow
    wf._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True, nolock=True)
    wf._build_dag()
    pipe = wf.globals["PIPE"]  # the Snakefile's Pipeline: what its run: blocks execute
    jobs = [
        {"rule": j.rule.name, "input": [str(f) for f in j.input], "output": [str(f) for f in j.output],
         "cmd": pipe.command(pipe.job(j.rule.name, dict(j.wildcards))), "params": sorted(j.params.values),
         "gpu": j.resources.get("gpu", 0), "log": [str(f) for f in j.log]}
        for j in wf.dag.jobs if j.output
    ]
print("JOBS=" + json.dumps(jobs))
"""


def tool_env() -> dict[str, str]:
    """The environment for subprocesses: tools already on PATH first, then this venv's."""
    env = dict(os.environ)
    env["PATH"] = f"{env.get('PATH', '')}{os.pathsep}{BIN}"
    env.setdefault("GIT_AUTHOR_NAME", "promptbias-test")
    env.setdefault("GIT_AUTHOR_EMAIL", "test@example.invalid")
    env.setdefault("GIT_COMMITTER_NAME", "promptbias-test")
    env.setdefault("GIT_COMMITTER_EMAIL", "test@example.invalid")
    return env


def job_env(**extra: str) -> dict[str, str]:
    """``tool_env`` for engine runs in tests: one thread per job, no GPU, no inherited fault, plus ``extra``."""
    env = tool_env()
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    env.pop("PROMPTBIAS_FAULT", None)
    env.update(extra)
    return env


def project_copy(dest: Path) -> Path:
    """Copy the workflow files (symlinks resolved) into ``dest`` and return it."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():  # (.dvc/: the shipped config only, never a local cache, tmp or config.local)
            ignore = shutil.ignore_patterns("tmp", "cache", "config.local", "__pycache__")
            shutil.copytree(src, dest / name, symlinks=False, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def run(argv: list[str], cwd: Path, check: bool = True, timeout: float = 3600) -> subprocess.CompletedProcess:
    exe = shutil.which(argv[0], path=tool_env()["PATH"]) or argv[0]
    res = subprocess.run(
        [exe, *argv[1:]],
        cwd=cwd,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and res.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        )
    return res


def git_dvc_repo(dest: Path) -> Path:
    """A fresh git repository holding a copy of the project (which ships its DVC repository files)."""
    project_copy(dest)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "init"], dest)
    return dest


def snakemake_jobs(
    proj: Path, target: str = "all", configfiles: list[str] | None = None
) -> list[dict[str, Any]]:
    """Every job Snakemake plans for ``target`` (forceall), with inputs, outputs, command, params keys."""
    res = run([sys.executable, "-c", _SNAKEMAKE_JOBS, target, *(configfiles or [])], proj, timeout=600)
    line = next(line for line in res.stdout.splitlines() if line.startswith("JOBS="))
    return json.loads(line.removeprefix("JOBS="))


def dvc_stages(path: Path) -> dict[str, dict[str, Any]]:
    """dvc.yaml as {stage: {cmd (one line), deps, outs (metrics included), params (key names)}}."""
    doc = yaml.safe_load(path.read_text())
    out = {}
    for name, st in doc["stages"].items():
        cmd = st["cmd"] if isinstance(st["cmd"], str) else " && ".join(st["cmd"])
        outs = [
            next(iter(o)) if isinstance(o, dict) else o for o in st.get("outs", []) + st.get("metrics", [])
        ]
        params = []
        for entry in st.get("params", []):
            params += [entry] if isinstance(entry, str) else [k for keys in entry.values() for k in keys]
        out[name] = {"cmd": cmd, "deps": list(st.get("deps", [])), "outs": outs, "params": params}
    return out
