"""Provenance end to end on the CI-sized demo, per engine: what ran is what dvc.lock and the records say.

* the README's DVC walkthrough, run verbatim (DVC engine): a key that a layered file sets is edited,
  exactly the affected stages rerun, and dvc.lock, train.json, the metrics sidecar and `dvc params diff`
  agree on the value; a forced train stage retrains; push → clone → pull → repro reruns only the data;
* the same bits (learned parameters, metrics, the demo CLIP) from `snakemake --cores 1`, `--cores 2`,
  `dvc repro` and `promptbias run`;
* Snakemake and the run driver: the same edit reruns exactly the affected jobs and the records agree;
  adding a layer file reruns only the jobs whose values change; a dry run writes nothing.

Slow: each engine runs the demo DAG once (module fixtures), then the edits.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from workflow_helpers import REPO, git_dvc_repo, project_copy, run

from promptbias.catalog import relevancy_prompt_method
from promptbias.pipeline import Pipeline
from tests.workspace import strict_json

pytestmark = pytest.mark.slow
DEMO_FILES = ("params.yaml", "config/demo.yaml", "config/demo-fast.yaml")  # the CI-sized demo
CONFIGFILES = ["--configfile", "config/demo.yaml", "config/demo-fast.yaml"]
BIAS_LR = ("config/demo.yaml", "methods.bias.lr")  # a key that a layered file sets
CHECK = "check-dvc-yaml"  # dvc.yaml's first stage: reruns (and passes) after any edit of a layer file
TIMING = {
    "seconds",
    "images_per_second",
    "wall_seconds_this_process",
    "train_seconds",
    "eval_images_per_second",
}


# ---------------------------------------------------------------------------------------- helpers
def _walkthrough_lines(name: str = "dvc") -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split(f"<!-- walkthrough: {name} -->", 1)[1].split("```", 2)[1]
    return [line.split("  #", 1)[0].strip() for line in block.strip().splitlines() if line.strip()]


def _jobs(proj: Path, files=DEMO_FILES) -> dict[str, object]:
    return {job.name: job for job in Pipeline.from_files([str(proj / f) for f in files]).jobs()}


def _reading(proj: Path, key: str, files=DEMO_FILES) -> set[str]:
    """The jobs whose command reads ``key`` (the key or a section above it is among its params)."""
    return {
        n for n, j in _jobs(proj, files).items() if any(key == k or key.startswith(k + ".") for k in j.params)
    }


def _mtimes(proj: Path) -> dict[str, int]:
    """Job name → mtime of its first output (a job that reruns rewrites it)."""
    return {n: (proj / j.out_paths[0]).stat().st_mtime_ns for n, j in _jobs(proj).items()}


def _rewritten(proj: Path, before: dict[str, int]) -> set[str]:
    return {n for n, t in _mtimes(proj).items() if t != before[n]}


def _set_yaml(path: Path, dotted: str, value: object) -> None:
    doc = yaml.safe_load(path.read_text())
    node = doc
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def _bits(proj: Path) -> dict[str, str]:
    """Digests of the learned parameters, the demo CLIP and the metrics (timing fields aside)."""
    out = {}
    for path in sorted([*proj.glob("runs/**/*.safetensors"), *proj.glob("metrics/*/*/seed*.json")]):
        data = path.read_bytes()
        if path.suffix == ".json":
            data = json.dumps(_without_timing(json.loads(data)), sort_keys=True).encode()
        out[str(path.relative_to(proj))] = hashlib.sha256(data).hexdigest()
    return out


def _assert_records_state(proj: Path, value: float, lock: dict | None = None) -> None:
    """train.json, the metrics sidecar (and dvc.lock) all name ``value`` for bias's lr, for every dataset."""
    for ds in ("demo_shapes", "demo_aerial"):
        train = json.loads((proj / f"runs/{ds}/bias/seed1/train.json").read_text())
        side = strict_json(proj / f"metrics/{ds}/bias/seed1.per_class.json")
        assert (
            train["params"]["methods.bias"]["lr"]
            == value
            == train["identity"]["params"]["methods.bias"]["lr"]
        )
        assert side["params"]["methods.bias"]["lr"] == value
        trained = {k: train["identity"][k] for k in ("job", "params", "inputs", "backbone")}
        assert side["evaluated"] == trained  # the metrics are of exactly those parameters
        if lock is not None:
            for stage in (f"train-{ds}-bias-s1", f"evaluate-{ds}-bias-s1"):
                assert _lock_value(lock["stages"][stage]["params"][BIAS_LR[0]], BIAS_LR[1]) == value


def _lock_value(tracked: dict, dotted: str) -> object:
    """The value dvc.lock records for ``dotted`` (tracked as itself or inside a section above it)."""
    for key, value in tracked.items():
        if dotted == key:
            return value
        if dotted.startswith(key + "."):
            for part in dotted[len(key) + 1 :].split("."):
                value = value[part]
            return value
    raise KeyError(dotted)


# --------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    """The README's DVC walkthrough, line by line, in a fresh repository: {line: output} and states."""
    top = tmp_path_factory.mktemp("walkthrough")
    cwd = git_dvc_repo(top / "promptbias")
    outputs, states = {}, {}
    for line in _walkthrough_lines():
        if line.startswith("dvc repro -f"):
            states["before_force"] = json.loads((cwd / "runs/demo_shapes/bias/seed1/train.json").read_text())
        if line.startswith("sed "):
            states["before_edit"] = (_bits(cwd), _mtimes(cwd))
        if line.startswith("git clone"):
            states["lock"] = yaml.safe_load((cwd / "dvc.lock").read_text())
        res = run(["bash", "-c", line], cwd, timeout=1800)
        outputs.setdefault(line, []).append(res.stdout + res.stderr)
        if line.startswith("dvc repro") and "after_repro" not in states and "before_edit" in states:
            states["after_repro"] = _rewritten(cwd, states["before_edit"][1])
        if "&& cd " in line:
            cwd = (cwd / line.rsplit("&& cd ", 1)[1].strip()).resolve()
    return {"outputs": outputs, "states": states, "repo": top / "promptbias", "clone": cwd}


@pytest.fixture(scope="module")
def snakemake_project(tmp_path_factory):
    proj = project_copy(tmp_path_factory.mktemp("snakemake") / "proj")
    run(
        ["snakemake", "report_html", "--cores", "2", *CONFIGFILES, "--resources", "gpu=0"], proj, timeout=1800
    )
    return proj


@pytest.fixture(scope="module")
def driver_repo(tmp_path_factory):
    repo = git_dvc_repo(tmp_path_factory.mktemp("driver") / "repo")
    params = [a for f in DEMO_FILES for a in ("--params", f)]
    run(["promptbias", *params, "dvc-yaml"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "demo-fast dvc.yaml"], repo)
    res = run(
        ["promptbias", "run", "--gpus", "0", "--cores", "2"], repo, timeout=1800
    )  # layering from dvc.yaml
    assert "DAG up to date" in res.stdout
    assert not run(["git", "diff", "--cached", "--name-only"], repo).stdout.strip()  # no job staged anything
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "results"], repo)
    return repo


# ------------------------------------------------------------------------------------------ tests
def test_same_bits_from_every_engine(walkthrough, snakemake_project, driver_repo, tmp_path):
    cores1 = project_copy(tmp_path / "cores1")
    run(["snakemake", "metrics", "--cores", "1", *CONFIGFILES, "--resources", "gpu=0"], cores1, timeout=1800)
    reference = walkthrough["states"]["before_edit"][0]  # dvc repro
    assert any("demo_clip" in k for k in reference) and any("/bias/" in k for k in reference)
    for name, proj in (("snakemake --cores 2", snakemake_project), ("promptbias run", driver_repo)):
        assert _bits(proj) == reference, name
    # `metrics` trains what Table 1 evaluates; Figs. 2-3's 4+4 prompt model is trained for the probes only
    figures_only = relevancy_prompt_method(Pipeline.from_files([str(cores1 / f) for f in DEMO_FILES]).cfg)
    expected = {k: v for k, v in reference.items() if f"/{figures_only}/" not in k}
    assert len(expected) < len(reference) and _bits(cores1) == expected, "snakemake --cores 1"


def test_snakemake_demo_dag_ends_with_the_report_and_leaves_nothing_to_do(snakemake_project):
    proj = snakemake_project
    assert (proj / "results/report.html").stat().st_size > 0
    summary = strict_json(proj / "metrics/summary.json")
    assert {"demo_shapes/zeroshot", "demo_shapes/prompt", "demo_shapes/bias"} <= set(summary["runs"])
    res = run(["snakemake", "report_html", "-n", "--cores", "2", *CONFIGFILES], proj)
    assert "Nothing to be done" in res.stdout + res.stderr
    # every job ran in the warm server's children (test_same_bits_from_every_engine: the bytes of dvc
    # repro's cold jobs); the server stopped with the run
    handed = [
        line
        for line in (proj / ".snakemake/log/promptbias-warm.log").read_text().splitlines()
        if ": promptbias " in line
    ]
    trains = [name for name in _jobs(proj) if name.startswith("train-")]
    assert len([line for line in handed if " train --dataset " in line]) == len(trains)
    assert "promptbias-warm: stopped" in (proj / ".snakemake/log/promptbias-warm.log").read_text()


def test_readme_dvc_walkthrough_reruns_exactly_the_edited_stages_and_the_records_agree(walkthrough):
    out, states, repo = walkthrough["outputs"], walkthrough["states"], walkthrough["repo"]
    statuses = out["dvc status"]
    assert "up to date" in statuses[0]
    expected = _reading(repo, BIAS_LR[1])
    assert expected == {
        f"{s}-{d}-bias-s1" for s in ("train", "evaluate", "probe") for d in ("demo_shapes", "demo_aerial")
    }
    assert set(re.findall(r"^(\S+):$", statuses[1], flags=re.M)) == expected | {CHECK}  # stale: exactly those
    assert states["after_repro"] == expected | {"aggregate", "render"}  # what reran: those and below
    ran = set(re.findall(r"Running stage '([^']+)'", out["dvc repro"][1]))
    assert ran == expected | {"aggregate", "render", CHECK}
    params_diff = out["dvc params diff"][0]
    assert re.search(r"config/demo\.yaml\s+methods\.bias\.lr\s+3\.0\s+2\.0", params_diff), params_diff
    metrics_diff = out["dvc metrics diff"][0]
    assert "/bias.json" in metrics_diff and "/prompt" not in metrics_diff and "/zeroshot" not in metrics_diff
    assert "images_per_second" not in metrics_diff and "nan" not in metrics_diff  # results only, no NaN
    shown = out["dvc metrics show"][0].splitlines()
    assert shown[0].split() == ["Path", "acc", "macro", "seeds", "std", "val"]
    assert len(shown) == 1 + len(
        {
            j.wildcards["dataset"] + j.wildcards["method"]
            for j in _jobs(repo).values()
            if j.stage.name == "evaluate"
        }
    )
    assert max(map(len, shown)) <= 80, shown  # one short row per dataset × method
    plots_diff = out["dvc plots diff HEAD"][0]
    assert "dvc_plots/index.html" in plots_diff, plots_diff
    page = (repo / "dvc_plots/index.html").read_text()
    assert "train-loss-demo_shapes" in page and "HEAD" in page and "workspace" in page  # both revisions
    assert "sensitivity.png" in page and "failed to load" not in plots_diff  # the figures, as image plots
    _assert_records_state(repo, 2.0, states["lock"])
    # the forced stage retrained (no checkpoint to resume: the finished job removed it)
    forced = out["dvc repro -f -s train-demo_shapes-bias-s1"][0]
    assert "Running stage 'train-demo_shapes-bias-s1'" in forced and "resuming" not in forced
    after = json.loads((repo / "runs/demo_shapes/bias/seed1/train.json").read_text())
    seconds = [[h["seconds"] for h in t["history"]] for t in (states["before_force"], after)]
    assert (
        seconds[0] != seconds[1]
        and after["history"][-1]["loss"] == states["before_force"]["history"][-1]["loss"]
    )
    assert not (repo / "runs/demo_shapes/bias/seed1/checkpoint.pt").exists()
    assert not run(["git", "status", "--porcelain"], repo).stdout.strip()  # no job touched git


def test_readme_dvc_experiments_dry_run_workspace_queue_show_apply(walkthrough, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(walkthrough["repo"], repo, symlinks=True)
    expected = _reading(repo, BIAS_LR[1])
    files = _snapshot(repo)
    out = {}
    for line in _walkthrough_lines("dvc-exp"):
        words = line.split()  # dvc exp run --dry … → "dry"; dvc exp show … → "show"
        key = (words[3] if words[2] == "run" else words[2]).lstrip("-")
        out[key] = run(["bash", "-c", line], repo, timeout=1800)
        if line.startswith("dvc exp run --dry"):
            assert _snapshot(repo) == files  # a dry run writes nothing in the workspace
    dry = out["dry"].stdout + out["dry"].stderr
    assert set(re.findall(r"Running stage '([^']+)'", dry)) == expected | {CHECK}  # bias's stages would run
    ran = set(re.findall(r"Running stage '([^']+)'", out["n"].stdout + out["n"].stderr))
    assert ran == expected | {"aggregate", "render", CHECK}
    table = [line.split("|")[1:-1] for line in out["show"].stdout.splitlines() if line.startswith("|")]
    header, rows = [c.strip() for c in table[0]], {r[0].strip(): [c.strip() for c in r] for r in table[2:]}
    lr = header.index(f"{BIAS_LR[0]}:{BIAS_LR[1]}")
    acc = header.index("metrics/demo_shapes/bias.json:acc")
    by_name = {name.split("[")[-1].rstrip("]"): row for name, row in rows.items() if "[" in name}
    assert {n: float(r[lr]) for n, r in by_name.items()} == {"bias-lr-1": 1.0, "bias-lr-4": 4.0}
    assert set(header) <= {"Experiment", f"{BIAS_LR[0]}:{BIAS_LR[1]}"} | {
        f"metrics/{d}/bias.json:acc" for d in ("demo_shapes", "demo_aerial")
    }
    # the queued experiment, applied: its params, records and metrics agree with the table
    _assert_records_state(repo, 4.0)
    applied = strict_json(repo / "metrics/demo_shapes/bias.json")
    assert applied["acc"] == float(by_name["bias-lr-4"][acc])


def test_a_pulled_clone_reruns_only_the_data_stages(walkthrough):
    out, clone = walkthrough["outputs"], walkthrough["clone"]
    assert clone.name == "promptbias-clone"
    ran = set(re.findall(r"Running stage '([^']+)'", out["dvc repro"][2]))
    assert ran and all(name.startswith(("fetch-", "cache-")) for name in ran), ran
    assert "up to date" in out["dvc status"][-1]
    assert _bits(clone) == _bits(walkthrough["repo"])


def test_a_stale_dvc_yaml_stops_a_forced_stage_in_one_line(walkthrough, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(walkthrough["repo"], repo, symlinks=True)
    _set_yaml(repo / "config/demo-fast.yaml", "methods.bias.lr", 0.5)  # dvc.yaml tracks it in demo.yaml
    status = run(["dvc", "status"], repo).stdout
    assert set(re.findall(r"^(\S+):$", status, flags=re.M)) == {CHECK}, status  # not "up to date"
    plain = run(["dvc", "repro"], repo, check=False)  # stops at the check, before any stage runs
    assert plain.returncode != 0 and "Running stage 'train-" not in plain.stdout + plain.stderr
    assert "dvc.yaml is stale" in plain.stdout + plain.stderr
    res = run(["dvc", "repro", "-f", "-s", "train-demo_shapes-bias-s1"], repo, check=False)
    assert res.returncode != 0
    errors = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "it tracks methods.bias.lr in config/demo.yaml" in errors[0]
    assert (
        "promptbias --params params.yaml --params config/demo.yaml --params config/demo-fast.yaml dvc-yaml"
        in errors[0]
    )
    # DVC removed the stage's outputs before the command refused: they come back from its cache
    run(["git", "checkout", "config/demo-fast.yaml"], repo)
    run(["dvc", "checkout", "-q"], repo)
    assert "up to date" in run(["dvc", "status"], repo).stdout
    # adding a layer file reruns only the stages whose values change (no command line changes)
    (repo / "config/extra.yaml").write_text("train:\n  eval_batch_size: 128\n")
    run(
        ["promptbias", *(a for f in (*DEMO_FILES, "config/extra.yaml") for a in ("--params", f)), "dvc-yaml"],
        repo,
    )
    stale = set(json.loads(run(["dvc", "status", "--json"], repo).stdout)) - {CHECK}
    files = (*DEMO_FILES, "config/extra.yaml")
    assert (
        stale
        == _reading(repo, "train.eval_batch_size", files)
        == {n for n in _jobs(repo) if n.startswith("evaluate-")}
    )


def test_snakemake_reruns_exactly_the_edited_jobs_and_a_new_layer_only_what_it_changes(snakemake_project):
    proj = snakemake_project
    (proj / "config/extra.yaml").write_text("train:\n  eval_batch_size: 128\n")
    plan = run(
        ["snakemake", "report_html", "-n", "--cores", "2", *CONFIGFILES, "config/extra.yaml"], proj
    ).stdout
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", plan, flags=re.M))
    n_eval = sum(1 for n in _jobs(proj) if n.startswith("evaluate-"))
    assert {k: int(v) for k, v in counts.items() if k != "total"} == {
        "evaluate": n_eval,
        "aggregate": 1,
        "render": 1,
        "report_html": 1,
    }
    before = _mtimes(proj)
    _set_yaml(proj / BIAS_LR[0], BIAS_LR[1], 2.0)
    run(
        ["snakemake", "report_html", "--cores", "2", *CONFIGFILES, "--resources", "gpu=0"], proj, timeout=1800
    )
    assert _rewritten(proj, before) == _reading(proj, BIAS_LR[1]) | {"aggregate", "render"}
    _assert_records_state(proj, 2.0)


def test_run_driver_reruns_exactly_the_edited_stages_dry_runs_write_nothing_and_force_retrains(driver_repo):
    repo = driver_repo
    _set_yaml(repo / BIAS_LR[0], BIAS_LR[1], 2.0)
    files = _snapshot(repo)
    dry = run(["promptbias", "run", "--gpus", "0", "-n"], repo)
    assert "DVC finds 6 stale stage(s)" in dry.stdout and "nothing was written" in dry.stdout
    assert _snapshot(repo) == files  # a dry run changes nothing
    before = _mtimes(repo)
    run(["promptbias", "run", "--gpus", "0", "--cores", "2"], repo, timeout=1800)
    assert _rewritten(repo, before) == _reading(repo, BIAS_LR[1]) | {"aggregate", "render"}
    assert "up to date" in run(["dvc", "status"], repo).stdout
    _assert_records_state(repo, 2.0, yaml.safe_load((repo / "dvc.lock").read_text()))
    diff = json.loads(run(["dvc", "params", "diff", "--json"], repo).stdout)
    assert {k: diff[BIAS_LR[0]][BIAS_LR[1]][k] for k in ("old", "new")} == {"old": 3.0, "new": 2.0}
    # --force: the stage reruns although nothing changed; same bytes, so nothing below it does
    before = _mtimes(repo)
    res = run(
        ["promptbias", "run", "--gpus", "0", "--force", "train-demo_aerial-bias-s1"], repo, timeout=1800
    )
    assert _rewritten(repo, before) == {"train-demo_aerial-bias-s1"} and "resuming" not in res.stderr


def _snapshot(root: Path) -> dict[str, str]:
    """Every file outside .git/.dvc/.snakemake → its digest."""
    skip = (".git", ".dvc", ".snakemake")
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] not in skip
    }
