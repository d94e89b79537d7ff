"""End to end through the real stages on the offline demo (CPU): the Snakemake DAG to the report, and DVC
(repro, a learning-rate edit that reruns only that method, metrics diff, push/pull, the run driver).

Slow: each test runs the whole demo DAG once. The wall time of the Snakemake run is printed (-s) for
bench/RESULTS.md.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml
from workflow_helpers import git_dvc_repo, project_copy, run

from promptbias.pipeline import Pipeline

pytestmark = pytest.mark.slow
DEMO_FILES = ("params.yaml", "config/demo.yaml", "config/demo-fast.yaml")  # CI-sized demo
PARAMS_ARGS = [a for f in DEMO_FILES for a in ("--params", f)]


def _ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def _jobs_reading(repo: Path, key: str) -> set[str]:
    pipe = Pipeline.from_files([str(repo / f) for f in DEMO_FILES])
    return {job.name for job in pipe.jobs() if any(key == k or key.startswith(k + ".") for k in job.params)}


def _set_in_yaml(path: Path, dotted: str, value: object) -> None:
    doc = yaml.safe_load(path.read_text())
    node = doc
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_demo_dag_through_snakemake_ends_with_the_report(tmp_path):
    proj = project_copy(tmp_path / "proj")
    start = time.perf_counter()
    run(
        [
            "snakemake",
            "report_html",
            "--cores",
            "2",
            "--configfile",
            "config/demo.yaml",
            "config/demo-fast.yaml",
            "--resources",
            "gpu=0",
        ],
        proj,
        timeout=1800,
    )
    wall = time.perf_counter() - start
    print(f"\ndemo DAG through Snakemake on this machine: {wall:.0f} s")
    assert (proj / "results/report.html").stat().st_size > 0
    summary = json.loads((proj / "metrics/summary.json").read_text())
    assert {"demo_shapes/zeroshot", "demo_shapes/prompt", "demo_shapes/bias"} <= set(summary["runs"])
    # nothing left to do: a second plan is empty
    res = run(
        [
            "snakemake",
            "report_html",
            "-n",
            "--cores",
            "2",
            "--configfile",
            "config/demo.yaml",
            "config/demo-fast.yaml",
        ],
        proj,
    )
    assert "Nothing to be done" in res.stdout + res.stderr


def test_dvc_repro_lr_edit_metrics_diff_push_pull_and_run_driver(tmp_path):
    repo = git_dvc_repo(tmp_path / "repo")
    run(["promptbias", *PARAMS_ARGS, "dvc-yaml"], repo)
    run(["dvc", "repro"], repo, timeout=1800)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "demo results"], repo)
    assert run(["dvc", "status", "--json"], repo).stdout.strip() in ("{}", "")

    # editing prompt's learning rate reruns only prompt's train/evaluate (and probes) and what depends on them
    lr_file = repo / "config/demo.yaml"  # (demo-fast.yaml sets no learning rate)
    if "lr" not in yaml.safe_load(lr_file.read_text()).get("methods", {}).get("prompt", {}):
        lr_file = repo / "params.yaml"  # the key lives where it is set (see the stage's params in dvc.yaml)
    old_lr = yaml.safe_load(lr_file.read_text())["methods"]["prompt"]["lr"]
    _set_in_yaml(lr_file, "methods.prompt.lr", old_lr * 4)
    stale = set(json.loads(run(["dvc", "status", "--json"], repo).stdout or "{}"))
    expected = _jobs_reading(repo, "methods.prompt.lr")
    assert stale == expected
    res = run(["dvc", "repro"], repo, timeout=1800)
    ran = _ran_stages(res.stdout)
    assert ran == expected | {"aggregate", "render"}
    assert not any("-bias-" in name or "-zeroshot-" in name for name in ran)

    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo).stdout)
    changed = {path for path, metrics in diff.items() for m in metrics.values() if m.get("diff")}
    assert any("/prompt/" in p for p in changed) and not any("/bias/" in p for p in changed)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "prompt lr x4"], repo)

    # push to a local remote, lose the outputs and the cache, pull them back
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "local", str(remote)], repo)
    run(["dvc", "push"], repo, timeout=600)
    ckpt = repo / "runs/demo_shapes/prompt/seed1/params.safetensors"
    before = ckpt.read_bytes()
    for path in (repo / "runs", repo / ".dvc/cache"):
        run(["rm", "-rf", str(path)], repo)
    run(["dvc", "pull"], repo, timeout=600)
    assert ckpt.read_bytes() == before
    assert (repo / "metrics/demo_shapes/prompt/seed1.json").is_file()  # metrics live in git (cache: false)
    assert "deleted" not in run(["dvc", "status"], repo).stdout

    # the run driver: DVC decides (bias lr edit), Snakemake runs, DVC commits
    _set_in_yaml(repo / "params.yaml", "methods.bias.lr", 0.005)
    res = run(["promptbias", *PARAMS_ARGS, "run", "--gpus", "0", "--cores", "2"], repo, timeout=1800)
    assert run(["dvc", "status", "--json"], repo).stdout.strip() in ("{}", "")
    assert "stale stage" in res.stderr
