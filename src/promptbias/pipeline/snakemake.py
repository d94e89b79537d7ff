"""Snakemake glue: the Pipeline of a Snakefile's config, wildcard regexes and per-rule threads.

    PIPE = pipeline_from_snakemake(workflow, config)     # in the Snakefile
    wildcard_constraints(PIPE)                          # {"dataset": "dtd|eurosat", "method": …, "seed": r"\\d+"}
    rule_threads(PIPE, stage)                           # what Snakemake reserves for one job of the stage

Snakemake layers ``configfile: params.yaml``, then ``--configfile`` files, then ``--config`` values;
every job runs ``promptbias --params params.yaml [--params <configfile> …] [--set <--config value> …]``,
so a command sees exactly the config Snakemake planned with. Snakemake's params trigger sees the
resolved values of the keys the command reads (``params.values``), never the command line
(``params.cmd`` is a function of the job's input, a derived param), so adding a layer file reruns only
the jobs whose values change.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from promptbias.config import deep_merge, read_yaml, validate_params
from promptbias.pipeline.plan import DEFAULT_PARAMS, Pipeline
from promptbias.pipeline.spec import (
    Config,
    Stage,
    all_datasets,
    evaluate_matrix,
    fetched_datasets,
    methods_for,
    train_matrix,
)


def pipeline_from_snakemake(workflow: Any, config: Config) -> Pipeline:
    """From a Snakefile: ``configfile:`` + ``--configfile`` files; ``--config`` values become ``--set``."""
    cwd = Path.cwd()
    files = [DEFAULT_PARAMS]
    for f in workflow.overwrite_configfiles:  # --configfile, absolute; params.yaml is the configfile:
        path = Path(f)
        rel = path.relative_to(cwd) if path.is_absolute() and path.is_relative_to(cwd) else path
        files.append(rel.as_posix())
    files = _dedupe_keep_last(files)
    file_data = [read_yaml(f) for f in files]
    merged: Config = {}
    for data in file_data:
        merged = deep_merge(merged, data)
    _retype_config_values(merged, config)
    overrides = tuple(f"{key}={json.dumps(value)}" for key, value in _leaf_diff(merged, config))
    source = " + ".join(files) + (" + --config" if overrides else "")
    validate_params(config, source=source)
    return Pipeline(json.loads(json.dumps(config)), tuple(files), overrides, file_data)


def _retype_config_values(files: Config, config: Config) -> None:
    """Read as YAML the ``--config`` values that Snakemake left as text where the params files hold a
    number, a boolean, null or a list (``--config 'train={"epochs": 3}'`` gives the string ``'3'``)."""
    for key, value in _leaf_diff(files, config):
        *parents, leaf = key.split(".")
        node, base = config, files
        for part in parents:
            node, base = node[part], base.get(part, {}) if isinstance(base, dict) else {}
        if not (isinstance(base, dict) and leaf in base) or isinstance(base[leaf], str):
            continue
        if isinstance(value, str):
            node[leaf] = _read_value(value)
        elif (
            isinstance(value, list)
            and all(isinstance(v, str) for v in value)
            and any(not isinstance(v, str) for v in base[leaf])
        ):  # ['2'] where params.yaml holds [1, 2, 3]
            node[leaf] = [_read_value(v) for v in value]


def _read_value(text: str) -> Any:
    """A number, boolean, null or list written as text (JSON first: YAML 1.1 reads "1e-4" as text)."""
    try:
        return json.loads(text)
    except ValueError:
        return yaml.safe_load(text)


def wildcard_constraints(pipe: Pipeline) -> dict[str, str]:
    """Regexes for the wildcards (so e.g. ``seed1.per_class.json`` never matches ``seed{seed}.json``)."""
    methods = {m for d in all_datasets(pipe.cfg) for m in methods_for(pipe.cfg, d)}
    methods |= {w["method"] for w in train_matrix(pipe.cfg)}  # also runs trained for the probes only
    datasets = list(
        dict.fromkeys([*fetched_datasets(pipe.cfg), *(w["dataset"] for w in evaluate_matrix(pipe.cfg))])
    )
    return {
        "dataset": "|".join(re.escape(d) for d in datasets),
        "method": "|".join(re.escape(m) for m in sorted(methods)) or "zeroshot",
        "seed": r"\d+",
    }


def rule_threads(pipe: Pipeline, stage: Stage) -> int:
    """CPU threads a job of ``stage`` uses: decoding workers on a GPU, the fixed torch threads on a CPU."""
    cfg = pipe.cfg
    if not stage.gpu:
        return 1
    if cfg["device"] != "cpu":
        return max(1, int(cfg["data"]["num_workers"] or 1))
    if stage.name == "pretrain-demo":
        return int(cfg["demo"]["pretrain_threads"])
    return int(cfg["cpu_threads"])


def rule_resources(pipe: Pipeline, stage: Stage) -> dict[str, Any]:
    """Snakemake resources of a ``stage`` job: ``gpu`` (1 only for a GPU stage when the config's device is
    not cpu), and what the SLURM executor turns into sbatch options, from the config's ``slurm`` section:
    ``slurm_account``, ``slurm_partition`` (the GPU partition for GPU jobs), ``runtime`` (min) and ``mem_mb``.
    Local runs ignore all but ``gpu`` (``--resources gpu=N``)."""
    cfg, slurm = pipe.cfg, pipe.cfg["slurm"]
    gpu = int(stage.gpu and cfg["device"] != "cpu")
    partition = (slurm["gpu_partition"] or slurm["partition"]) if gpu else slurm["partition"]
    resources: dict[str, Any] = {
        "gpu": gpu,
        "runtime": slurm["runtime"].get(stage.name, slurm["runtime"]["default"]),
        "mem_mb": slurm["mem_mb"].get(stage.name, slurm["mem_mb"]["default"]),
    }
    if slurm["account"]:
        resources["slurm_account"] = slurm["account"]
    if partition:
        resources["slurm_partition"] = partition
    return resources


def _leaf_diff(base: Config, new: Config, prefix: str = "") -> list[tuple[str, Any]]:
    """(key path, value) for every leaf of ``new`` that ``base`` lacks or holds differently."""
    out = []
    for key, value in new.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict) and value:
            out += _leaf_diff(base[key], value, f"{path}.")
        elif key not in base or base[key] != value:
            out.append((path, value))
    return out


def _dedupe_keep_last(items: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for item in reversed(items):
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out[::-1]
