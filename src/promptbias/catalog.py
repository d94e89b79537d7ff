"""What the pipeline knows about each method and probe — torch-free, so the Snakefile and dvc.yaml can ask.

    from promptbias import catalog
    catalog.method_info("prompt-d3-n4")       # MethodInfo(kind="prompt", trains=True, …): grid ids are prompts
    catalog.METHOD_INFO["bias"].schema        # the JSON schema of params methods.bias
    catalog.PROBE_INFO["maps"].writes_arrays  # maps.npz beside maps.parquet
    catalog.PROBE_INFO["relevancy"].params    # ("probes.start_layer", …): keys beyond the common ones
    catalog.relevancy_prompt_method(cfg)      # "prompt-d12-n4": the prompt model of Figs. 2-3

A method is one module whose ``nn.Module`` class carries ``@register_method`` (promptbias.methods.base)
plus one :func:`register_method_info`; a probe is one module with a ``@register_probe`` function plus one
:func:`register_probe_info`. The built-ins are registered below; other packages add theirs from a module
named in ``PROMPTBIAS_PLUGINS`` (comma-separated, imported on first use here), so a new method or probe
needs no edit of promptbias. The stage matrix, outputs and params keys (:mod:`promptbias.pipeline.spec`),
the params schema (:func:`promptbias.config.params_schema`) and the commands all read these entries.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

from promptbias.errors import UserError

PLUGINS_ENV = "PROMPTBIAS_PLUGINS"


@dataclass(frozen=True)
class MethodInfo:
    kind: str
    module: str  # imported before the method is built (its class registers itself there)
    trains: bool  # learnable tensors: a train stage, a params.safetensors; zero-shot has none
    schema: dict[str, Any]  # JSON schema of methods.<kind> (the trainer reads "lr")
    id_pattern: str | None = None  # further method ids of this kind, e.g. the prompt grid

    def matches(self, method_id: str) -> bool:
        return method_id == self.kind or bool(self.id_pattern and re.fullmatch(self.id_pattern, method_id))


@dataclass(frozen=True)
class ProbeInfo:
    name: str
    module: str  # imported before the probe runs (its function registers itself there)
    writes_arrays: bool = False  # also writes <name>.npz
    params: tuple[str, ...] = ()  # params keys it reads beyond the common probes.* ones
    common: tuple[str, ...] = field(default=("probes.max_images", "probes.sample_seed", "probes.batch_size"))
    summary: str = ""  # one line for `promptbias probe --help`
    zeroshot_params: tuple[str, ...] = ()  # keys it reads for a zero-shot run only (no learned tensors)


METHOD_INFO: dict[str, MethodInfo] = {}
PROBE_INFO: dict[str, ProbeInfo] = {}


def register_method_info(info: MethodInfo) -> MethodInfo:
    METHOD_INFO[info.kind] = info
    return info


def register_probe_info(info: ProbeInfo) -> ProbeInfo:
    PROBE_INFO[info.name] = info
    return info


@functools.cache
def load_plugins() -> tuple[str, ...]:
    """Import the modules named in ``PROMPTBIAS_PLUGINS`` (once per process)."""
    names = tuple(n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip())
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise UserError(
                f"{PLUGINS_ENV}: cannot import {name} ({exc}) — fix the module name or PYTHONPATH"
            ) from None
    return names


def methods() -> dict[str, MethodInfo]:
    load_plugins()
    return METHOD_INFO


def probes() -> dict[str, ProbeInfo]:
    load_plugins()
    return PROBE_INFO


def method_info(method_id: str) -> MethodInfo:
    """The entry of a method id (a kind, or an id its kind's pattern matches)."""
    for info in methods().values():
        if info.matches(method_id):
            return info
    known = ", ".join(info.kind for info in methods().values())
    raise UserError(f"unknown method {method_id!r} — use one of {known} or prompt-d<DEPTH>-n<NUMBER>")


def relevancy_prompt_method(cfg: dict[str, Any]) -> str:
    """The prompt method id of Figs. 2-3 (``probes.relevancy_prompt``), e.g. ``prompt-d12-n4``.

    ``depth: null`` means every layer the Table-1 prompt uses (``methods.prompt.depth_text``).
    """
    spec = cfg["probes"]["relevancy_prompt"]
    depth = spec["depth"] if spec["depth"] is not None else cfg["methods"]["prompt"]["depth_text"]
    return f"prompt-d{int(depth)}-n{int(spec['n_ctx'])}"


def probe_info(name: str) -> ProbeInfo:
    if name not in probes():
        raise UserError(f"probe {name!r}: unknown — choose one of {', '.join(sorted(PROBE_INFO))}")
    return PROBE_INFO[name]


# ------------------------------------------------------------------------------------- built-ins
_DEPTH = {"type": "integer", "minimum": 0, "maximum": 48}
_LR = {"type": "number", "exclusiveMinimum": 0}

register_method_info(
    MethodInfo(
        "zeroshot",
        "promptbias.methods.zeroshot",
        trains=False,
        schema={"type": "object", "additionalProperties": False, "properties": {}},
    )
)
register_method_info(
    MethodInfo(
        "prompt",
        "promptbias.methods.prompt",
        trains=True,
        schema={
            "type": "object",
            "additionalProperties": False,
            "required": ["lr", "n_ctx_text", "n_ctx_vision", "depth_text", "depth_vision", "ctx_init"],
            "properties": {
                "lr": _LR,
                "n_ctx_text": {"type": "integer", "minimum": 0, "maximum": 64},
                "n_ctx_vision": {"type": "integer", "minimum": 0, "maximum": 64},
                "depth_text": _DEPTH,
                "depth_vision": _DEPTH,
                "ctx_init": {"type": ["string", "null"]},
            },
        },
        id_pattern=r"prompt-d(?P<depth>[0-9]+)-n(?P<n>[0-9]+)",  # the sensitivity grid: depth × tokens
    )
)
register_method_info(
    MethodInfo(
        "bias",
        "promptbias.methods.bias",
        trains=True,
        schema={
            "type": "object",
            "additionalProperties": False,
            "required": ["lr", "depth_text", "depth_vision"],
            "properties": {"lr": _LR, "depth_text": _DEPTH, "depth_vision": _DEPTH},
        },
    )
)
for _name, _arrays, _params, _summary in (
    (
        "relevancy",
        False,
        ("probes.start_layer",),
        "gradient-weighted attention relevancy of CLS / EOS (Figs. 2-3)",
    ),
    ("attention_stats", False, (), "attention shares of SOS, prompts, category and EOS tokens (Fig. 4)"),
    ("attention_distance", False, (), "mean attention distance of patch queries in pixels (Fig. 5)"),
    ("attention_entropy", False, (), "attention entropy per layer, with and without prompt keys (Fig. 5)"),
    (
        "maps",
        True,
        ("probes.map_images", "probes.rotations"),
        "prompt-patch attention and similarity maps (Fig. 6)",
    ),
    ("bias_decomposition", True, (), "how much of the prompts' attention update is a constant bias"),
):
    register_probe_info(
        ProbeInfo(
            _name,
            f"promptbias.probes.{_name}",
            writes_arrays=_arrays,
            params=_params,
            # the zero-shot captions of the relevancy probe; a learned method keeps the captions it trained with
            zeroshot_params=("probes.relevancy_template",) if _name == "relevancy" else (),
            summary=_summary,
        )
    )
