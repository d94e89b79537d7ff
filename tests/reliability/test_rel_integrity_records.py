"""Records and messages that say what really happened (issue 27, "records and docs that overstate").

* a record made from an uncommitted edit says so: ``provenance`` names HEAD, ``git_dirty`` and the
  tracked files that differ;
* plain ``dvc status`` / ``dvc repro`` (the real DVC) cannot call a layered config up to date while a
  layer file sets a key that dvc.yaml tracks in another file: the ``check-dvc-yaml`` stage stops the run
  in one line, before any stage runs;
* every stage tracks exactly the config keys its command reads: each command runs in-process on a
  config that records every leaf it reads (:class:`_Recording`), compared with the keys dvc.yaml tracks;
* on success, fetch / split / validate / dvc-yaml / render write nothing on stderr (progress and
  ``ok:`` lines go to stdout); ``promptbias run`` says "dvc.lock updated" only when it committed
  something, and names ``snakemake --unlock`` when a killed Snakemake's lock stops it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from promptbias.cli import cli
from tests.reliability.helpers import snapshot, sub_env
from tests.workspace import REPO, Workspace

CHECK = "check-dvc-yaml"
BIN = Path(sys.executable).parent
TRAIN = ("train", "--dataset", "demo_shapes", "--method", "bias", "--seed", "1")


# ------------------------------------------------------------------------------------------ helpers
def _edit(path: Path, **dotted: Any) -> None:
    """Set ``a__b=value`` keys (``__`` separates sections) in a YAML file, creating sections."""
    doc = yaml.safe_load(path.read_text()) if path.exists() else {}
    for key, value in dotted.items():
        node = doc
        *parents, last = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _invoke(ws: Path, *args: str) -> Any:
    """The CLI in-process in ``ws`` (stdout and stderr apart), arguments as given (relative paths)."""
    old = os.getcwd()
    os.chdir(ws)
    try:
        return CliRunner().invoke(cli, list(args), catch_exceptions=True)
    finally:
        os.chdir(old)


def _ok(res: Any) -> Any:
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    return res


def _tool_env() -> dict[str, str]:
    """DVC's subprocess environment: this venv's ``promptbias`` and ``dvc`` first on PATH."""
    return sub_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


def _dvc(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "dvc"), *args], cwd=ws, env=_tool_env(), capture_output=True, text=True, timeout=600
    )


def _git(ws: Path, *args: str) -> str:
    argv = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args]
    return subprocess.run(argv, cwd=ws, check=True, capture_output=True, text=True).stdout


# ------------------------------------------------------------------- 1. provenance names a dirty tree
def test_a_record_made_from_an_uncommitted_params_edit_says_so(base_ws, tmp_path, monkeypatch):
    from promptbias.io import provenance

    ws = base_ws.copy(tmp_path / "ws")
    _git(ws.path, "init", "-q")
    _git(ws.path, "add", "params.yaml")
    _git(ws.path, "commit", "-qm", "params")
    head = _git(ws.path, "rev-parse", "HEAD").strip()
    _edit(ws.params, train__epochs=2)  # not committed: HEAD's params.yaml says 3
    ws.cli(*TRAIN)
    record = json.loads((ws.path / "runs/demo_shapes/bias/seed1/train.json").read_text())
    prov = record["provenance"]
    assert prov["git_sha"] == head and record["params"]["train.epochs"] == 2
    assert (
        prov["git_dirty"] is True
        and prov["git_changed"] == ["params.yaml"]
        and prov["git_changed_count"] == 1
    )
    _git(ws.path, "commit", "-qam", "two epochs")  # committed: the same run is clean
    monkeypatch.chdir(ws.path)
    clean = provenance()
    assert clean["git_dirty"] is False and clean["git_changed"] == [] and clean["git_sha"] != head


# ------------------------------------------------- 2. plain dvc repro and a key moved into a layer file
def test_plain_dvc_repro_is_not_up_to_date_while_a_layer_file_sets_a_key_tracked_elsewhere(base_ws, tmp_path):
    ws = base_ws.copy(tmp_path / "ws")
    # a small DAG: zero-shot on one dataset, no probes, no image cache
    _edit(ws.params, sweep__methods=["zeroshot"], probes__kinds=[], data__cache_images=False)
    layer = ws.path / "layer.yaml"
    _edit(layer, render__formats=["png"])
    layering = ("--params", "params.yaml", "--params", "layer.yaml")
    _ok(_invoke(ws.path, *layering, "dvc-yaml"))
    for args in (
        ("evaluate", "--dataset", "demo_shapes", "--method", "zeroshot", "--seed", "1"),
        ("aggregate",),
    ):
        _ok(_invoke(ws.path, *layering, *args))
    _ok(_invoke(ws.path, *layering, "render"))
    commit = _dvc(ws.path, "commit", "--force", "--quiet")
    assert commit.returncode == 0, commit.stderr
    assert "up to date" in _dvc(ws.path, "status").stdout
    sidecar = ws.path / "metrics/demo_shapes/zeroshot/seed1.per_class.json"
    old = json.loads(sidecar.read_text())["params"]["train.eval_batch_size"]
    # a key moved into the layer file with a new value; dvc.yaml (not regenerated) tracks it in params.yaml
    _edit(layer, train__eval_batch_size=old + 1)
    status = _dvc(ws.path, "status")
    assert "up to date" not in status.stdout and f"{CHECK}:" in status.stdout, status.stdout
    before = snapshot(ws.path / "metrics")
    repro = _dvc(ws.path, "repro")
    out = repro.stdout + repro.stderr
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert repro.returncode != 0 and len(errors) == 1, out
    assert "dvc.yaml is stale" in errors[0]
    assert "promptbias --params params.yaml --params layer.yaml dvc-yaml" in errors[0]
    assert not re.search(r"Running stage '(?!check-dvc-yaml)", out), out  # it stopped before any stage
    assert snapshot(ws.path / "metrics") == before  # the record still names the old value: nothing ran
    # regenerated, DVC now reruns the stage that reads the key (and the check, which passes)
    _ok(_invoke(ws.path, *layering, "dvc-yaml"))
    stale = set(json.loads(_dvc(ws.path, "status", "--json").stdout))
    assert "evaluate-demo_shapes-zeroshot-s1" in stale and "fetch-demo_shapes" not in stale


# -------------------------------------------------- 3. every stage tracks exactly the keys it reads
class _Recorder:
    """The config leaves read while recording is on (paused inside bookkeeping that reads everything)."""

    def __init__(self) -> None:
        self.read: set[str] = set()
        self.paused = 0

    def note(self, path: str, value: Any) -> None:
        if self.paused:
            return
        if isinstance(value, dict) and value:
            for key, child in dict.items(value):
                self.note(f"{path}.{key}", child)
        else:
            self.read.add(path)

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        self.paused += 1
        try:
            yield
        finally:
            self.paused -= 1


class _Recording(dict):
    """A config section that notes each leaf a command takes out of it (by key, get, items, values, **)."""

    def __init__(self, data: dict, rec: _Recorder, path: str = "") -> None:
        super().__init__(
            {k: _Recording(v, rec, f"{path}{k}.") if isinstance(v, dict) else v for k, v in data.items()}
        )
        self._rec, self._path = rec, path

    def _take(self, key: Any, value: Any) -> Any:
        if not isinstance(value, _Recording):
            self._rec.note(f"{self._path}{key}", value)
        return value

    def __getitem__(self, key: Any) -> Any:
        return self._take(key, dict.__getitem__(self, key))

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if dict.__contains__(self, key) else default

    def __iter__(self) -> Iterator[Any]:  # not dict's own: `{**section}` then goes through __getitem__
        return iter(list(dict.keys(self)))

    def items(self) -> list[tuple[Any, Any]]:  # type: ignore[override]
        return [(k, self[k]) for k in dict.keys(self)]

    def values(self) -> list[Any]:  # type: ignore[override]
        return [self[k] for k in dict.keys(self)]

    def plain(self) -> dict:
        return {k: v.plain() if isinstance(v, _Recording) else v for k, v in dict.items(self)}

    def __deepcopy__(self, memo: dict) -> _Recording:
        with self._rec.pause():
            return _Recording(copy.deepcopy(self.plain(), memo), self._rec, self._path)

    def copy(self) -> _Recording:
        return _Recording(self.plain(), self._rec, self._path)


class _Watched:
    """A read-noting view of :class:`promptbias.settings.Settings` (its fields are config leaves)."""

    def __init__(self, obj: Any, rec: _Recorder, path: str) -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_rec", rec)
        object.__setattr__(self, "_path", path)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._obj, name)
        if name.startswith("_") or (callable(value) and not dataclasses.is_dataclass(value)):
            return value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return _Watched(value, self._rec, f"{self._path}{name}.")
        if not isinstance(value, MappingProxyType):  # the methods section: a _Recording notes its reads
            self._rec.note(f"{self._path}{name}", value)
        return value


def _record_reads(monkeypatch: pytest.MonkeyPatch, rec: _Recorder) -> None:
    """Commands get a recording config; bookkeeping that reads every key it tracks or validates is not
    counted: bind_job (it reads the tracked values to put them in the record), the schema check, a
    record's serialisation, and the Settings snapshot (its fields are noted when read instead)."""
    import promptbias.config as config
    import promptbias.io as io
    import promptbias.pipeline.bind as bind
    import promptbias.settings as settings

    def cfg_property(self: Any) -> dict:
        if self._config is None:
            self._config = _Recording(config.load_params(self.params_files, self.overrides), rec)
        return self._config

    def paused(fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            with rec.pause():
                return fn(*args, **kwargs)

        return call

    of = settings.Settings.of.__func__

    def settings_of(cls: type, cfg: dict) -> Any:
        with rec.pause():
            made = of(cls, cfg)
        return _Watched(made, rec, "") if isinstance(cfg, _Recording) else made

    monkeypatch.setattr(config.RunContext, "config", property(cfg_property))
    monkeypatch.setattr(bind, "bind_job", paused(bind.bind_job))
    if hasattr(config, "params_problem"):  # the schema check of command-line overrides
        monkeypatch.setattr(config, "params_problem", paused(config.params_problem))
    # train.json also states the whole config ("config": no reader; see the report) — not a read
    monkeypatch.setattr(io, "write_json", paused(io.write_json))
    monkeypatch.setattr(settings.Settings, "of", classmethod(settings_of))


READ_ORDER = (
    "fetch-demo_shapes",
    "split-demo_shapes-s1",
    "cache-demo_shapes",
    "train-demo_shapes-bias-s1",
    "evaluate-demo_shapes-zeroshot-s1",
    "evaluate-demo_shapes-bias-s1",
    "probe-demo_shapes-zeroshot-s1",
    "probe-demo_shapes-bias-s1",
    "aggregate",
    "render",
)


def test_every_stage_tracks_exactly_the_keys_its_command_reads(base_ws, tmp_path, monkeypatch):
    from promptbias.pipeline import Pipeline
    from promptbias.pipeline.dvc import dvc_stages
    from promptbias.pipeline.plan import PERFORMANCE_ONLY, get_key, leaves

    ws = base_ws.copy(tmp_path / "ws")
    _edit(
        ws.params,
        probes__max_images=4,
        probes__map_images=2,
        probes__seeds=[1],
        probes__methods=["zeroshot", "bias"],
    )
    monkeypatch.chdir(ws.path)
    pipe = Pipeline.from_files(["params.yaml"])
    jobs = {job.name: job for job in pipe.jobs()}
    stages = dvc_stages(pipe)
    # every stage this config has runs below (pretrain-demo has no job without the demo world's CLIP)
    assert {job.stage.name for job in jobs.values()} == {jobs[n].stage.name for n in READ_ORDER}

    def tracked(name: str) -> dict[str, set[str]]:
        """Each key dvc.yaml tracks for the stage → its config leaves (an empty section has none)."""
        keys = [k for entry in stages[name].get("params", []) for k in _keys(entry)]
        return {
            k: {leaf for leaf in leaves(get_key(pipe.cfg, k), k) if get_key(pipe.cfg, leaf) != {}}
            for k in keys
        }

    def identity_checks(name: str) -> set[str]:
        """Keys a trained method's evaluate/probe reads only to check the tensors' identity (the train
        stage's keys, which its params.safetensors dependency carries)."""
        job = jobs[name]
        if job.stage.name not in ("evaluate", "probe") or job.wildcards["method"] == "zeroshot":
            return set()
        train = pipe.job("train", job.wildcards)
        return {leaf for k in train.params for leaf in leaves(get_key(pipe.cfg, k), k)}

    rec = _Recorder()
    _record_reads(monkeypatch, rec)
    problems = []
    for name in READ_ORDER:
        rec.read.clear()
        res = CliRunner().invoke(cli, ["--params", "params.yaml", *jobs[name].args.split()])
        assert res.exit_code == 0, f"{name}: {res.output}\n{res.exception!r}"
        read, keys = rec.read - PERFORMANCE_ONLY, tracked(name)
        extra = read - set().union(*keys.values()) - identity_checks(name)
        if jobs[name].stage.name == "probe":
            extra -= {"probes.kinds"}  # compared with the kinds its command line names
        # a section (model, methods.<kind>) is tracked whole: it is read when any key of it is
        unused = {k for k, under in keys.items() if under and not under & read}
        if extra or unused:
            problems.append(f"{name}: reads untracked {sorted(extra)}; tracks unread {sorted(unused)}")
    assert not problems, "\n".join(problems)
    # what the relevancy probe reads, by its effect: a new zero-shot caption template changes the zero-shot
    # tables and not the learned method's (which keeps the captions it trained with) — tracked accordingly
    import pandas as pd

    def relevancy(method: str) -> pd.DataFrame:
        argv = [
            "--params",
            "params.yaml",
            "probe",
            "relevancy",
            "--dataset",
            "demo_shapes",
            "--method",
            method,
        ]
        assert CliRunner().invoke(cli, [*argv, "--seed", "1"]).exit_code == 0
        return pd.read_parquet(ws.path / f"probes/demo_shapes/{method}/seed1/relevancy.parquet")

    before = {m: relevancy(m) for m in ("zeroshot", "bias")}
    _edit(ws.params, probes__relevancy_template="itap of the {} here.")
    edited = Pipeline.from_files(["params.yaml"])
    for method, frame in before.items():
        changed = not frame.equals(relevancy(method))
        job = edited.job("probe", {"dataset": "demo_shapes", "method": method, "seed": 1})
        assert ("probes.relevancy_template" in job.params) is changed, (method, changed, job.params)


def _keys(entry: Any) -> list[str]:
    return [entry] if isinstance(entry, str) else [k for keys in entry.values() for k in keys]


def test_the_relevancy_template_is_tracked_only_where_it_is_read():
    from promptbias.pipeline import Pipeline

    pipe = Pipeline.from_files([str(REPO / "params.yaml")])
    by_method: dict[str, set[bool]] = {}
    for job in pipe.jobs():
        if job.stage.name == "probe":
            kind = "zeroshot" if job.wildcards["method"] == "zeroshot" else "learned"
            by_method.setdefault(kind, set()).add("probes.relevancy_template" in job.params)
    assert by_method == {"zeroshot": {True}, "learned": {False}}
    edited = Pipeline.from_files(
        [str(REPO / "params.yaml")], ["probes.relevancy_template=a photo of the {}."]
    )
    changed = {
        a.name
        for a, b in zip(pipe.jobs(), edited.jobs(), strict=True)
        if pipe.param_values(a.params) != edited.param_values(b.params)
    }
    assert changed == {
        n for n in (j.name for j in pipe.jobs()) if n.startswith("probe-") and "-zeroshot-" in n
    } | {"render"}


# ------------------------------------------------------------------------- 4. messages on stderr
def test_successful_commands_write_nothing_on_stderr(base_ws, tmp_path):
    ws = base_ws.copy(tmp_path / "ws")
    _edit(ws.params, sweep__methods=["zeroshot"], probes__kinds=[])
    p = ("--params", "params.yaml")
    commands = [
        ("fetch", "demo_shapes"),
        ("split", "demo_shapes", "--shots", "4", "--seed", "1"),
        ("validate",),
        ("dvc-yaml",),
        ("dvc-yaml", "--check"),
        ("render",),  # before any evaluation: every figure and table a marked gap, still a success
    ]
    for args in commands:
        res = _ok(_invoke(ws.path, *p, *args))
        assert res.stderr == "", f"promptbias {' '.join(args)} wrote on stderr: {res.stderr!r}"
        if args[0] in ("fetch", "split", "validate", "dvc-yaml"):
            assert res.stdout.splitlines()[-1].startswith("ok: "), res.stdout
    assert "render table1:" in res.stdout  # the per-renderer lines


def _runner_ws(base_ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    ws = base_ws.copy(tmp_path / "ws")
    _ok(_invoke(ws.path, "--params", "params.yaml", "dvc-yaml"))
    monkeypatch.chdir(ws.path)
    return ws


@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
def test_promptbias_run_says_dvc_lock_updated_only_when_it_committed(base_ws, tmp_path, monkeypatch, dry):
    import promptbias.runner as runner

    _runner_ws(base_ws, tmp_path, monkeypatch)
    calls: list[list[str]] = []
    monkeypatch.setattr(runner, "stale_stages", lambda dvc="dvc": {})  # DVC: nothing stale
    monkeypatch.setattr(runner, "_call", lambda argv, what: calls.append(argv))
    res = _ok(
        CliRunner().invoke(cli, ["--params", "params.yaml", "run", "--gpus", "0", *(["-n"] if dry else [])])
    )
    assert "dvc.lock updated" not in res.output and "DAG up to date" in res.output and not calls
    # a round that ran and committed a stage says so (and nothing on stderr)
    rounds = iter([{"split-demo_shapes-s1": "changed"}, {}])
    monkeypatch.setattr(runner, "stale_stages", lambda dvc="dvc": next(rounds))
    monkeypatch.setattr(runner, "check_records", lambda pipe, jobs: None)
    res = _ok(
        CliRunner().invoke(cli, ["--params", "params.yaml", "run", "--gpus", "0", *(["-n"] if dry else [])])
    )
    assert ("dvc.lock updated" in res.stdout) is (not dry) and res.stderr == "", res.output


def test_a_killed_snakemakes_lock_is_named_with_the_unlock_fix(base_ws, tmp_path, monkeypatch, capfd):
    import promptbias.runner as runner

    ws = _runner_ws(base_ws, tmp_path, monkeypatch)
    (ws.path / ".snakemake/locks").mkdir(parents=True)
    (ws.path / ".snakemake/locks/0.input.lock").write_text("")  # what a SIGKILLed Snakemake leaves
    fake = tmp_path / "snakemake"
    fake.write_text("#!/bin/sh\necho 'Error: Directory cannot be locked.' >&2\nexit 1\n")
    fake.chmod(0o755)
    real_tool = runner._tool
    monkeypatch.setattr(runner, "_tool", lambda name: str(fake) if name == "snakemake" else real_tool(name))
    monkeypatch.setattr(runner, "stale_stages", lambda dvc="dvc": {"split-demo_shapes-s1": "changed"})
    from promptbias.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--params", "params.yaml", "run", "--gpus", "0"])
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert info.value.code == 2 and len(errors) == 1, err
    assert ".snakemake/locks" in errors[0] and "snakemake --unlock" in errors[0]
