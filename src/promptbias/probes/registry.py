"""The probe registry: a probe is one function ``ProbeContext -> ProbeResult`` registered by name.

    @register_probe("my_probe", needs_grad=False)
    def my_probe(ctx: ProbeContext) -> ProbeResult: ...

    PROBES["relevancy"].run(ctx)

Adding a probe = one module with a registered function + its import in ``promptbias/probes/__init__.py``
(and the name in the params schema's ``probes.kinds`` enum).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from promptbias.probes.common import ProbeContext, ProbeResult

ProbeFn = Callable[[ProbeContext], ProbeResult]


@dataclass(frozen=True)
class ProbeSpec:
    name: str
    run: ProbeFn
    writes_arrays: bool = False  # also writes <kind>.npz
    description: str = ""


PROBES: dict[str, ProbeSpec] = {}


def register_probe(name: str, writes_arrays: bool = False) -> Callable[[ProbeFn], ProbeFn]:
    def deco(fn: ProbeFn) -> ProbeFn:
        doc = (fn.__doc__ or "").strip().splitlines()
        PROBES[name] = ProbeSpec(name, fn, writes_arrays, doc[0] if doc else "")
        return fn

    return deco


def run_probe(name: str, ctx: ProbeContext) -> ProbeResult:
    if name not in PROBES:
        raise KeyError(f"unknown probe {name!r}; known: {', '.join(sorted(PROBES))}")
    return PROBES[name].run(ctx)
