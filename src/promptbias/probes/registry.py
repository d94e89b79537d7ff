"""The probe registry: a probe is one function ``ProbeContext -> ProbeResult`` registered by name.

    @register_probe("my_probe")
    def my_probe(ctx: ProbeContext) -> ProbeResult: ...

    run_probe("relevancy", ctx)      # imports the probe's module (promptbias.catalog) on first use

Adding a probe = one module with a registered function + one ``register_probe_info`` entry (its module,
whether it writes arrays, the params keys it reads) in :mod:`promptbias.catalog` or a plugin module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from promptbias.probes.common import ProbeContext, ProbeResult

ProbeFn = Callable[[ProbeContext], ProbeResult]


@dataclass(frozen=True)
class ProbeSpec:
    name: str
    run: ProbeFn


PROBES: dict[str, ProbeSpec] = {}


def register_probe(name: str) -> Callable[[ProbeFn], ProbeFn]:
    def deco(fn: ProbeFn) -> ProbeFn:
        PROBES[name] = ProbeSpec(name, fn)
        return fn

    return deco


def get_probe(name: str) -> ProbeSpec:
    """The registered probe (its module imported first; an unknown name is a one-line UserError)."""
    from promptbias.catalog import probe_info

    info = probe_info(name)
    if name not in PROBES:
        importlib.import_module(info.module)
    return PROBES[name]


def run_probe(name: str, ctx: ProbeContext) -> ProbeResult:
    return get_probe(name).run(ctx)
