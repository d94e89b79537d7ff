"""Case 3 — a Snakemake run interrupted mid-DAG and restarted ends like an uninterrupted one; DVC is clean.

The project (Snakefile, workflow/, params.yaml, config/) is copied into a fresh git + DVC repository and
run through the run driver (``promptbias run``: DVC decides, Snakemake runs, DVC commits) on the demo
config with a tiny-CLIP overlay (7 jobs: fetch, split, train bias, evaluate zeroshot + bias, aggregate, render;
the whole DAG, because the driver's final ``dvc commit`` covers every stage of dvc.yaml).
The driver is interrupted twice — Ctrl-C (SIGINT to its process group) while training, then SIGKILL of
the whole process group while the aggregation writes its summary — and restarted each time after
``snakemake --unlock`` (a killed Snakemake leaves its lock). Both interruptions are placed with the ``hold`` fault (the job stops at
a named point and says so in a mark file), so they land mid-job however loaded the machine is. The second
run resumes the training from its epoch-1 checkpoint; the results equal an uninterrupted run of the same
commands (wall-clock fields aside), every output parses, and ``dvc status`` is clean.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from promptbias.cli import cli
from tests.reliability.helpers import assert_outputs_parse, wait_for, without_timing
from tests.workflow_helpers import git_dvc_repo, job_env, run

pytestmark = pytest.mark.slow

OVERLAY = """\
# tests/reliability: the demo DAG shrunk to a handful of jobs on the tiny random CLIP
model: {name: promptbias-tiny, pretrained: null, precision: fp32}
device: cpu
data: {shots: 4, num_workers: 0, cache_images: false}
sweep: {datasets: [demo_shapes], methods: [zeroshot, bias], seeds: [1]}
train: {epochs: 4, batch_size: 8}
methods: {bias: {depth_text: 2, depth_vision: 2}, prompt: {depth_text: 2, depth_vision: 2}}
sensitivity: {enabled: false}
probes: {methods: [], seeds: []}
demo: {enabled: false}
"""
FILES = ("params.yaml", "config/demo.yaml", "config/rel.yaml")
PARAMS = [a for f in FILES for a in ("--params", f)]
RESULTS = (
    "runs/demo_shapes/bias/seed1/params.safetensors",
    "metrics/demo_shapes/zeroshot/seed1.json",
    "metrics/demo_shapes/bias/seed1.json",
    "metrics/demo_shapes/bias/seed1.per_class.json",
    "metrics/summary.json",
)


def _driver(repo: Path, **env: str) -> subprocess.Popen[str]:
    """``promptbias run`` in its own process group (as a terminal would start it)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "promptbias.cli",
            *PARAMS,
            "run",
            "--gpus",
            "0",
            "--cores",
            "1",
            "--",
            "--rerun-incomplete",  # jobs a kill interrupted (as workflow/profiles/local sets)
        ],
        cwd=repo,
        env=job_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=_as_in_a_terminal,
    )


def _as_in_a_terminal() -> None:
    """Default SIGINT/SIGQUIT in the driver (and so in Snakemake and the jobs): a test runner started in
    the background (`cmd &` in a script, nohup) passes them on ignored, and then a Ctrl-C does nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def _reference(path: Path) -> None:
    """The same commands, uninterrupted, in-process (no engine around them)."""
    commands = [
        ["fetch", "demo_shapes"],
        ["split", "demo_shapes", "--shots", "4", "--seed", "1"],
        ["train", "--dataset", "demo_shapes", "--method", "bias", "--seed", "1"],
        ["evaluate", "--dataset", "demo_shapes", "--method", "zeroshot", "--seed", "1"],
        ["evaluate", "--dataset", "demo_shapes", "--method", "bias", "--seed", "1"],
        ["aggregate"],
    ]
    old = os.getcwd()
    os.chdir(path)
    try:
        for args in commands:
            res = CliRunner().invoke(cli, [*PARAMS, *args], catch_exceptions=False)
            assert res.exit_code == 0, res.output
    finally:
        os.chdir(old)


def _unlock(repo: Path) -> None:
    """``snakemake --unlock`` (the documented recovery after a killed Snakemake)."""
    configs = ["--configfile", "config/demo.yaml", "config/rel.yaml"]
    run([str(Path(sys.executable).parent / "snakemake"), *configs, "--unlock", "--cores", "1"], repo)


def _load(path: Path) -> object:
    if path.suffix == ".json":
        return without_timing(json.loads(path.read_text()))
    return path.read_bytes()


def test_interrupted_dag_restarts_to_the_same_results_and_clean_dvc(tmp_path: Path) -> None:
    repo = git_dvc_repo(tmp_path / "repo")
    (repo / "config/rel.yaml").write_text(OVERLAY)
    run([sys.executable, "-m", "promptbias.cli", *PARAMS, "dvc-yaml"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny overlay"], repo)
    ref = tmp_path / "reference"
    ref.mkdir()
    for f in FILES:
        (ref / f).parent.mkdir(parents=True, exist_ok=True)
        (ref / f).write_text((repo / f).read_text())
    _reference(ref)

    # 1. Ctrl-C while the train job runs: it holds at the first step of epoch 2 (epoch 1 is checkpointed)
    mark = tmp_path / "held"
    proc = _driver(repo, PROMPTBIAS_FAULT="bias/seed1/epoch2.step1.:hold", PROMPTBIAS_FAULT_MARK=str(mark))
    assert wait_for(mark.exists, proc, timeout=600), proc.communicate()[0][-3000:]
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0, out[-3000:]
    assert (repo / "runs/demo_shapes/bias/seed1/checkpoint.pt").is_file()
    assert not (repo / "runs/demo_shapes/bias/seed1/params.safetensors").exists()
    assert_outputs_parse(repo)
    _unlock(repo)  # harmless when Snakemake released its lock on Ctrl-C

    # 2. SIGKILL of the whole process group (driver, Snakemake, the job) while aggregate holds right
    #    before writing metrics/summary.json: training and evaluation are done by then
    mark.unlink()
    proc = _driver(repo, PROMPTBIAS_FAULT="summary.json:hold", PROMPTBIAS_FAULT_MARK=str(mark))
    assert wait_for(mark.exists, proc, timeout=600), proc.communicate()[0][-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert (
        "resuming runs/demo_shapes/bias/seed1 after epoch 1/4"
        in (repo / "logs/train/demo_shapes/bias/seed1.log").read_text()
    ), out[-3000:]
    assert not (repo / "metrics/summary.json").exists()
    assert_outputs_parse(repo)
    _unlock(repo)  # a SIGKILLed Snakemake always leaves its lock behind

    # 3. restart: the same command finishes
    proc = _driver(repo)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]

    assert not assert_outputs_parse(repo), "atomic temporaries left behind"
    for rel in RESULTS:
        assert _load(repo / rel) == _load(ref / rel), f"{rel} differs from the uninterrupted run"
    status = run([str(Path(sys.executable).parent / "dvc"), "status", "--json"], repo).stdout.strip()
    assert status in ("{}", ""), status
