"""Load, layer and validate params; typed access for the commands.

    cfg = load_params(["params.yaml", "config/demo.yaml"], overrides=["train.epochs=2"])
    cfg["train"]["epochs"]                       # plain nested dicts, validated
    kind, hp = method_settings(cfg, "prompt-d3-n4")   # ("prompt", {...depth 3, 4 tokens...})

    cfg = ctx.config_with({"train.epochs": ("--epochs", 2)})   # a command's own flags, validated the same

Files are deep-merged left to right, then ``KEY=VALUE`` overrides are applied (values parsed as YAML),
then the result is validated against ``schemas/params.schema.yaml`` (the same file the Snakefile
validates with) plus what JSON schema cannot say: every number finite (NaN and ±inf pass ``minimum``
checks), an integer key an integer (``2.0`` is not), no key given twice in one file. A command's own
options (``train --lr``, ``--epochs``, ``--batch-size``, ``--device``) are folded into the config and go
through the same validation (:meth:`RunContext.config_with`). Any problem is a :class:`UserError`
naming the file (or the option), the key path and the fix — before the command writes anything.
"""

from __future__ import annotations

import copy
import difflib
import functools
import math
import re
from collections.abc import Iterator, Mapping
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (not: the last wins)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:  # the keys as written (a `<<:` merge may be overridden: not checked)
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(key, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, mark: Any) -> None:
        super().__init__(key)
        self.key, self.mark = key, mark


def read_yaml(path: str | Path) -> dict[str, Any]:
    """One params file as a mapping; UserError (one line: the file, where, the fix) for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: params file not found — create it or pass the right file with --params")
    text = _decode(path, path.read_bytes())
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no object tags
    except _DuplicateKey as dup:
        raise UserError(
            f"{path}: line {dup.mark.line + 1}: key {dup.key!r} is given twice in the same section (YAML "
            "would silently keep the last) — keep one"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(
            f"{path}:{where}: not valid YAML ({getattr(exc, 'problem', exc)}) — fix the syntax"
        ) from None
    if data is None:
        raise UserError(
            f"{path}: the file holds no keys (empty or only comments) — restore its keys, or leave it "
            "out of --params"
        )
    if not isinstance(data, dict):
        raise UserError(
            f"{path}: top level must be a mapping of keys (key: value lines), got a "
            f"{type(data).__name__} — write the params as keys (see params.yaml)"
        )
    return data


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{path}: line {line}: byte 0x{raw[exc.start]:02x} is not UTF-8 — save the file as UTF-8 "
            "(retype the character or remove it)"
        ) from None


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
    if isinstance(value, str) and _PLAIN_NUMBER.fullmatch(value):  # YAML 1.1 reads "1e-3" as a string;
        value = float(value)  # users mean a number ("nan", "inf" stay text: YAML's .nan/.inf are floats)
    node[parts[-1]] = value


_PLAIN_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+")  # 1e-3, 2.5E4: what YAML 1.1 misses


def load_params(
    files: list[str] | tuple[str, ...], overrides: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    for f in files:
        cfg = deep_merge(cfg, read_yaml(f))
    for assignment in overrides:
        apply_override(cfg, assignment)
    given = {a.split("=", 1)[0].strip(): f"--set {a}" for a in overrides}  # a problem there names the --set
    _refuse_problem(cfg, given, source=" + ".join(str(f) for f in files))
    return cfg


def validate_params(cfg: dict[str, Any], source: str = "params.yaml") -> None:
    """Raise UserError for the most relevant violation, naming its key path and the fix."""
    problem = params_problem(cfg)
    if problem is not None:
        raise UserError(f"{source}: {problem[1]}")


def params_problem(cfg: dict[str, Any]) -> tuple[str, str] | None:
    """(key path, one-line description with the fix) of the first thing wrong with ``cfg``; None: valid."""
    for path, value in _numbers(cfg):  # before the schema: NaN passes every minimum/maximum check
        if not math.isfinite(value):
            return path, f"{path}: {value!r} is not a finite number — give a finite value"
    errors = sorted(_validator().iter_errors(cfg), key=lambda e: (len(e.absolute_path), e.path))
    if errors:
        text = describe_schema_error(errors[0])
        return text.split(": ", 1)[0], text  # the key path the description starts with (an unknown key's)
    return _semantic_problem(cfg)


def with_flags(
    cfg: dict[str, Any], flags: Mapping[str, tuple[str, Any]], source: str = "params.yaml"
) -> dict[str, Any]:
    """A copy of ``cfg`` with a command's options set, validated like the params files.

    ``flags``: key path → (option, value); a value of None is an option not given. A problem in a key an
    option set names the option (``--lr: methods.bias.lr: -1.0 is too small …``), else ``source``.
    """
    out = copy.deepcopy(cfg)
    given: dict[str, str] = {}
    for key, (option, value) in flags.items():
        if value is None:
            continue
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node[part]
        node[last] = value
        given[key] = option
    if given:
        _refuse_problem(out, given, source)
    return out


def _refuse_problem(cfg: dict[str, Any], given: Mapping[str, str], source: str) -> None:
    """UserError for the first problem of ``cfg``, naming the option that set its key (``given``: key path
    → option) or else ``source``."""
    problem = params_problem(cfg)
    if problem is not None:
        path, text = problem
        option = next((o for k, o in given.items() if path == k or path.startswith(k + ".")), None)
        raise UserError(f"{option or source}: {text}")


def _numbers(node: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """(key path, value) of every float in the nested config."""
    if isinstance(node, float):
        yield path or "<top level>", node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _numbers(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _numbers(value, f"{path}.{i}")


def _validator() -> Any:
    """The params schema's validator; ``integer`` means an int (JSON schema also accepts 2.0). Not cached:
    the schema follows the catalog (``params_schema.cache_clear()`` after plugins load)."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)
    )
    return jsonschema.validators.extend(base, type_checker=checker)(params_schema())


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
        return f"{path}: {err.instance!r} should be of type {err.validator_value} — {_type_fix(err)}"
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


def _type_fix(err: Any) -> str:
    """The fix of a type error: the usual YAML traps spelt out."""
    wanted, value = err.validator_value, err.instance
    wanted = wanted if isinstance(wanted, list) else [wanted]
    number = _as_float(value) if isinstance(value, str) else None
    if number is not None and "number" in wanted:
        if not math.isfinite(number):
            return "give a finite number (NaN and infinity are refused)"
        return (
            "YAML reads a number without a dot such as 1e-3 as text: write it with a dot and a signed "
            "exponent (1.0e-3) or as a decimal (0.001)"
        )
    if isinstance(value, float) and "integer" in wanted and math.isfinite(value):
        return f"give a whole number without a decimal point (e.g. {round(value)})"
    return "fix the value"


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _semantic_problem(cfg: dict[str, Any]) -> tuple[str, str] | None:
    for method in list(cfg["sweep"]["methods"]) + list(cfg["probes"]["methods"]):
        kind = method_kind(method)
        if kind not in cfg["methods"]:
            return (
                f"methods.{kind}",
                f"methods.{kind}: missing — add its hyper-parameters (see params.yaml)",
            )
    return None


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


class SeedType(click.ParamType):
    """``--seed`` of train, evaluate and probe: an integer that ``sweep.seeds`` would accept (≥ 0).

    Refused in one line (a :class:`UserError`) while the command line is parsed, before anything runs.
    """

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        option = param.opts[0] if param is not None and param.opts else "--seed"
        try:
            seed = int(value)
        except (TypeError, ValueError):
            raise UserError(f"{option}: {value!r} is not an integer — give a seed such as 1") from None
        problem = _seed_problem(seed)
        if problem is not None:
            raise UserError(f"{option}: {problem}")
        return seed


def _seed_problem(seed: int) -> str | None:
    import jsonschema

    item = params_schema()["properties"]["sweep"]["properties"]["seeds"]["items"]
    errors = list(jsonschema.Draft202012Validator(item).iter_errors(seed))
    return describe_schema_error(errors[0]).removeprefix("<top level>: ") if errors else None


SEED = SeedType()


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

    def config_with(self, flags: Mapping[str, tuple[str, Any]]) -> dict[str, Any]:
        """The config with a command's options folded in (see :func:`with_flags`), validated."""
        return with_flags(self.config, flags, source=" + ".join(self.params_files))


@click.command("validate")
@click.pass_obj
def validate_command(ctx: RunContext) -> None:
    """Validate the params files and print the resolved configuration."""
    cfg = ctx.config
    click.echo(yaml.safe_dump(cfg, sort_keys=False), nl=False)
    click.echo(f"ok: {' + '.join(ctx.params_files)} is valid")
