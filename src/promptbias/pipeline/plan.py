"""The spec applied to one configuration: concrete jobs, their params values, and which file sets them.

    pipe = Pipeline.from_files(["params.yaml", "config/demo.yaml"])
    for job in pipe.jobs():                 # every concrete job of this config, in DAG order
        job.name, job.args, job.deps, job.outs, job.params
    pipe.command(job)                       # promptbias --params params.yaml --params config/demo.yaml train …
    pipe.param_values(job.params)           # {"model": {...}, "methods.prompt": {...}, …} (resolved values)
    pipe.dvc_params(job.params)             # the same keys, each under the params file that sets it last

Both engines run ``promptbias <global options> <job.args>`` for the same files: Snakemake passes its
config files as ``--params``; DVC runs the bare command, which takes the layering from dvc.yaml (see
:mod:`promptbias.pipeline.dvc`), so adding a layer file changes no command line.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from promptbias.config import load_params, read_yaml
from promptbias.pipeline.spec import (
    STAGE_BY_NAME,
    STAGE_BY_RULE,
    STAGES,
    Config,
    Out,
    Stage,
    Wildcards,
    check_consistency,
)

DEFAULT_PARAMS = "params.yaml"
PERFORMANCE_ONLY = frozenset({"data.num_workers"})  # change speed, never an output: never params


@dataclass
class Job:
    """One concrete stage invocation (a DVC stage, a Snakemake job)."""

    stage: Stage
    wildcards: Wildcards
    name: str
    args: str  # the command's arguments after the global options
    deps: list[str]
    outs: list[Out]
    params: list[str]
    records: list[str]
    gpu: int
    log: str

    @property
    def out_paths(self) -> list[str]:
        return [o.path for o in self.outs]


@dataclass
class Pipeline:
    """The spec applied to one resolved config (plus the params files and overrides it came from)."""

    cfg: Config
    params_files: tuple[str, ...] = (DEFAULT_PARAMS,)
    overrides: tuple[str, ...] = ()
    _file_data: list[Config] = field(default_factory=list, repr=False)

    @classmethod
    def from_files(cls, files: Sequence[str] = (DEFAULT_PARAMS,), overrides: Sequence[str] = ()) -> Pipeline:
        files = tuple(str(f) for f in files)
        cfg = load_params(files, tuple(overrides))
        return cls(cfg, files, tuple(overrides), [read_yaml(f) for f in files])

    def __post_init__(self) -> None:
        if not self._file_data:
            self._file_data = [read_yaml(f) for f in self.params_files]
        check_consistency(self.cfg)

    # -- jobs
    def stages(self) -> list[Stage]:
        """Stages with at least one job for this config, in DAG order."""
        return [s for s in STAGES if s.matrix(self.cfg)]

    def jobs(self) -> Iterator[Job]:
        for stage in self.stages():
            for wildcards in stage.matrix(self.cfg):
                yield self.job(stage.name, wildcards)

    def job(self, stage_name: str, wildcards: dict[str, Any]) -> Job:
        stage = STAGE_BY_NAME.get(stage_name) or STAGE_BY_RULE[stage_name]
        w = {k: str(wildcards[k]) for k in stage.wildcards}
        return Job(
            stage=stage,
            wildcards=w,
            name=job_name(stage, w),
            args=stage.command(self.cfg, w),
            deps=stage.deps(self.cfg, w),
            outs=[_format_out(o, w) for o in stage.outs(self.cfg)],
            params=job_keys(self.cfg, stage, w),
            records=[r.format(**w) for r in stage.records(self.cfg)],
            gpu=int(stage.gpu and self.cfg["device"] != "cpu"),
            log=stage.log.format(**w),
        )

    @property
    def prefix(self) -> str:
        """``promptbias --params F ...`` — the global options of this layering (Snakemake's jobs)."""
        parts = ["promptbias"]
        for f in self.params_files:
            parts += ["--params", f]
        for o in self.overrides:
            parts += ["--set", o]
        return shlex.join(parts)

    def command(self, job: Job) -> str:
        """The job's command line with this layering's global options."""
        return f"{self.prefix} {job.args}"

    def param_values(self, keys: Sequence[str]) -> dict[str, Any]:
        return {k: get_key(self.cfg, k) for k in keys}

    # -- which file sets a key (DVC tracks each key in that file)
    def dvc_params(self, keys: Sequence[str]) -> list[Any]:
        """DVC ``params:`` entries: each key under the file that sets it last (sections split as needed)."""
        by_file: dict[str, list[str]] = {f: [] for f in self.params_files}
        for key in keys:
            for sub, owner in self._attribute(key):
                if sub not in by_file[owner]:
                    by_file[owner].append(sub)
        entries: list[Any] = []
        for f, subkeys in by_file.items():
            if not subkeys:
                continue
            if f == DEFAULT_PARAMS:
                entries += subkeys
            else:
                entries.append({f: subkeys})
        return entries

    def _attribute(self, key: str) -> list[tuple[str, str]]:
        owners = {self._owner(leaf) for leaf in leaves(get_key(self.cfg, key), key)}
        owners.discard(None)
        if len(owners) <= 1:
            return [(key, owners.pop() if owners else self.params_files[-1])]
        value = get_key(self.cfg, key)
        return [pair for child in value for pair in self._attribute(f"{key}.{child}")]

    def _owner(self, leaf: str) -> str | None:
        for f, data in reversed(list(zip(self.params_files, self._file_data, strict=True))):
            if has_key(data, leaf):
                return f
        return None


def job_keys(cfg: Config, stage: Stage, w: Wildcards) -> list[str]:
    """The params keys a job's command reads (present in this config; never performance-only keys)."""
    return [k for k in stage.params(cfg, w) if k not in PERFORMANCE_ONLY and has_key(cfg, k)]


def job_values(cfg: Config, stage_name: str, wildcards: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(job name, {key: value}) of one job: what its record states (no params files needed)."""
    stage = STAGE_BY_NAME[stage_name]
    w = {k: str(wildcards[k]) for k in stage.wildcards}
    return job_name(stage, w), {k: get_key(cfg, k) for k in job_keys(cfg, stage, w)}


def job_name(stage: Stage, w: Wildcards) -> str:
    """DVC stage name: ``train-eurosat-prompt-s1`` (DVC allows letters, digits, '-' and '_')."""
    parts = [stage.name]
    for key in stage.wildcards:
        parts.append(f"s{w[key]}" if key == "seed" else w[key])
    return "-".join(parts)


def _format_out(out: Out, w: Wildcards) -> Out:
    return dataclasses.replace(out, path=out.path.format(**w))


def get_key(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def has_key(cfg: Config, key: str) -> bool:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def leaves(value: Any, prefix: str) -> list[str]:
    if isinstance(value, dict) and value:
        return [leaf for k, v in value.items() for leaf in leaves(v, f"{prefix}.{k}")]
    return [prefix]
