"""The run driver's decisions, without running DVC or Snakemake: which stale stages run in a round, and
when a round's records may be committed (the end-to-end walk is tests/test_provenance_e2e.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from promptbias.errors import UserError
from promptbias.pipeline import Pipeline
from promptbias.runner import check_records, frontier

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    pipe = Pipeline.from_files([str(REPO / "params.yaml"), str(REPO / "config/demo.yaml")])
    return pipe, {job.name: job for job in pipe.jobs()}


def _named(jobs, stage: str, **wildcards) -> str:
    return next(
        name
        for name, job in jobs.items()
        if job.stage.name == stage and all(str(job.wildcards.get(k)) == str(v) for k, v in wildcards.items())
    )


def test_a_round_runs_the_stale_stages_with_nothing_stale_upstream(demo):
    _, jobs = demo
    produced = {path for job in jobs.values() for path in job.out_paths}
    roots = [name for name, job in jobs.items() if not set(job.deps) & produced]
    assert roots and len(roots) < len(jobs)
    assert frontier(jobs, set(jobs)) == roots  # everything stale: only the sources run first

    train = _named(jobs, "train", dataset="demo_shapes", method="bias", seed=1)
    evaluate = _named(jobs, "evaluate", dataset="demo_shapes", method="bias", seed=1)
    aggregate = _named(jobs, "aggregate")
    assert frontier(jobs, {train, evaluate, aggregate}) == [train]
    assert frontier(jobs, {evaluate, aggregate}) == [evaluate]
    other = _named(jobs, "evaluate", dataset="demo_aerial", method="zeroshot", seed=1)
    assert frontier(jobs, {other, evaluate}) == [
        n for n in jobs if n in {other, evaluate}
    ]  # siblings together


def test_a_round_commits_only_records_that_state_the_tracked_params(demo, tmp_path, monkeypatch):
    pipe, jobs = demo
    monkeypatch.chdir(tmp_path)
    job = jobs[_named(jobs, "train", dataset="demo_shapes", method="bias", seed=1)]
    assert job.records
    with pytest.raises(UserError, match="missing or unreadable after job"):
        check_records(pipe, [job])
    stated = pipe.param_values(job.params)
    for record in job.records:
        Path(record).parent.mkdir(parents=True, exist_ok=True)
        Path(record).write_text(json.dumps({"params": stated}))
    check_records(pipe, [job])  # what dvc.yaml tracks: committed

    key = next(k for k in stated if k.startswith("methods."))
    edited = json.loads(json.dumps(stated))
    edited[key]["lr"] = edited[key]["lr"] * 2
    Path(job.records[0]).write_text(json.dumps({"params": edited}))
    with pytest.raises(UserError, match="states params other than those dvc.yaml tracks") as err:
        check_records(pipe, [job])
    assert "\n" not in str(err.value)
