"""Load, layer and validate params; typed access for the commands.

    cfg = load_params(["params.yaml", "config/demo.yaml"], overrides=["train.epochs=2"])
    cfg["train"]["epochs"]                       # plain nested dicts, validated
    kind, hp = method_settings(cfg, "prompt-d3-n4")   # ("prompt", {...depth 3, 4 tokens...})

Files are deep-merged left to right, then ``KEY=VALUE`` overrides are applied (values parsed as YAML),
then the result is validated against ``schemas/params.schema.yaml`` (the same file the Snakefile
validates with). Any problem is a :class:`UserError` naming the file, the key path and the fix.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import click
import yaml

from promptbias.errors import UserError

SCHEMA_RESOURCE = "schemas/params.schema.yaml"


@functools.cache
def params_schema() -> dict[str, Any]:
    """The params schema with what the catalog registers: each method's section, method ids, probe kinds."""
    from promptbias import catalog

    schema = yaml.safe_load(resources.files("promptbias").joinpath(SCHEMA_RESOURCE).read_text())
    methods, probes = catalog.methods(), catalog.probes()
    section = schema["properties"]["methods"]
    section.update(
        additionalProperties=False,
        required=sorted(methods),
        properties={kind: info.schema for kind, info in methods.items()},
    )
    patterns = [
        re.sub(r"\(\?P<\w+>", "(", i.id_pattern) for i in methods.values() if i.id_pattern
    ]  # plain groups
    ids = [re.escape(kind) for kind in methods] + patterns
    schema["$defs"]["method_name"]["pattern"] = f"^({'|'.join(ids)})$"
    schema["properties"]["probes"]["properties"]["kinds"]["items"]["enum"] = sorted(probes)
    return schema


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: params file not found — create it or pass the right file with --params")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(
            f"{path}:{where}: not valid YAML ({getattr(exc, 'problem', exc)}) — fix the syntax"
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return base updated by update; nested mappings merge, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(cfg: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: expected KEY=VALUE — write it as e.g. --set train.epochs=2")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = cfg
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: '{part}' is not a section — check the key path")
    value = yaml.safe_load(raw)
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string; users mean a number
        with contextlib.suppress(ValueError):
            value = float(value)
    node[parts[-1]] = value


def load_params(
    files: list[str] | tuple[str, ...], overrides: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    for f in files:
        cfg = deep_merge(cfg, read_yaml(f))
    for assignment in overrides:
        apply_override(cfg, assignment)
    validate_params(cfg, source=" + ".join(str(f) for f in files))
    return cfg


def validate_params(cfg: dict[str, Any], source: str = "params.yaml") -> None:
    """Raise UserError for the most relevant schema violation, naming its key path and the fix."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(params_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), e.path))
    if errors:
        raise UserError(f"{source}: {describe_schema_error(errors[0])}")
    _check_semantics(cfg, source)


def describe_schema_error(err: Any) -> str:
    path = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        key = extra[0] if extra else "?"
        where = f"{path}.{key}" if path != "<top level>" else key
        hint = difflib.get_close_matches(key, allowed, n=1)
        fix = f"did you mean '{hint[0]}'?" if hint else f"allowed keys here: {', '.join(allowed)}"
        return f"{where}: unknown key — {fix}"
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        return f"{path}: missing key '{missing}' — add it (see params.yaml for the default)"
    if err.validator == "enum":
        options = [str(v) for v in err.validator_value]
        hint = difflib.get_close_matches(str(err.instance), options, n=1)
        fix = f"did you mean {hint[0]!r}?" if hint else "use one of these"
        return f"{path}: {err.instance!r} is not one of {', '.join(map(repr, err.validator_value))} — {fix}"
    if err.validator == "type":
        return f"{path}: {err.instance!r} should be of type {err.validator_value} — fix the value"
    if err.validator in ("minimum", "exclusiveMinimum"):
        return f"{path}: {err.instance!r} is too small (must be {'>' if 'exclusive' in err.validator else '≥'} {err.validator_value}) — raise it"
    if err.validator == "maximum":
        return f"{path}: {err.instance!r} is too large (must be ≤ {err.validator_value}) — lower it"
    if err.validator == "minItems":
        return f"{path}: the list is empty — give at least {err.validator_value} item(s)"
    if err.validator == "pattern":
        return (
            f"{path}: {err.instance!r} is not valid (expected to match {err.validator_value}) — fix the value"
        )
    return f"{path}: {err.message} — fix the value (see params.yaml for a valid example)"


def _check_semantics(cfg: dict[str, Any], source: str) -> None:
    for method in list(cfg["sweep"]["methods"]) + list(cfg["probes"]["methods"]):
        kind = method_kind(method)
        if kind not in cfg["methods"]:
            raise UserError(f"{source}: methods.{kind}: missing — add its hyper-parameters (see params.yaml)")


def method_kind(method_id: str) -> str:
    """The kind of a method id: its catalog entry's (grid ids 'prompt-d<D>-n<N>' are prompts)."""
    from promptbias.catalog import method_info

    return method_info(method_id).kind


def method_trains(method_id: str) -> bool:
    """Whether the method has learnable tensors (a train stage); zero-shot has none."""
    from promptbias.catalog import method_info

    return method_info(method_id).trains


def method_settings(cfg: dict[str, Any], method_id: str) -> tuple[str, dict[str, Any]]:
    """The method kind and the hyper-parameters its class takes (grid ids override depth and token
    counts); the learning rate is the trainer's (:func:`method_lr`)."""
    from promptbias.catalog import method_info

    info = method_info(method_id)
    settings = {k: v for k, v in cfg["methods"].get(info.kind, {}).items() if k != "lr"}
    grid = re.fullmatch(info.id_pattern, method_id) if info.id_pattern else None
    if grid:  # the catalog's grid pattern names the depth and the number of tokens
        depth, n = int(grid["depth"]), int(grid["n"])
        settings.update(depth_text=depth, depth_vision=depth, n_ctx_text=n, n_ctx_vision=n)
    return info.kind, settings


def method_lr(cfg: dict[str, Any], method_id: str) -> float:
    """The learning rate of a trained method (``methods.<kind>.lr``)."""
    return float(cfg["methods"][method_kind(method_id)]["lr"])


def grid_method_ids(cfg: dict[str, Any]) -> list[str]:
    """Method ids of the sensitivity grid (empty unless sensitivity.enabled)."""
    sens = cfg["sensitivity"]
    if not sens["enabled"]:
        return []
    return [f"prompt-d{d}-n{n}" for d in sens["depths"] for n in sens["n_ctx"]]


@dataclass
class RunContext:
    """What the CLI group resolved: params files, overrides, debug flag; the config on first use."""

    params_files: tuple[str, ...] = ("params.yaml",)
    overrides: tuple[str, ...] = ()
    debug: bool = False
    _config: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def config(self) -> dict[str, Any]:
        if self._config is None:
            self._config = load_params(self.params_files, self.overrides)
        return self._config


@click.command("validate")
@click.pass_obj
def validate_command(ctx: RunContext) -> None:
    """Validate the params files and print the resolved configuration."""
    cfg = ctx.config
    click.echo(yaml.safe_dump(cfg, sort_keys=False), nl=False)
    click.echo(f"ok: {' + '.join(ctx.params_files)} is valid", err=True)
