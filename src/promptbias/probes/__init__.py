"""Analysis probes (paper §3.2–3.3): relevancy, attention statistics, distance, entropy, maps, bias decomposition.

    from promptbias.probes import PROBES, ProbeContext, run_probe
    result = run_probe("attention_entropy", ProbeContext(clip, method, images_uint8, labels, ids))
    df = result.table.frame("dtd", "prompt", 1, "attention_entropy")

The CLI (``promptbias probe KIND --dataset D --method M --seed S``) is in :mod:`promptbias.probes.commands`.
Add a probe by writing one module with a ``@register_probe`` function and importing it here.
"""

from promptbias.probes import (  # noqa: F401  (registration)
    attention_distance,
    attention_entropy,
    attention_stats,
    bias_decomposition,
    maps,
    relevancy,
)
from promptbias.probes.common import ProbeContext, ProbeResult, ProbeSettings
from promptbias.probes.registry import PROBES, register_probe, run_probe

__all__ = ["PROBES", "ProbeContext", "ProbeResult", "ProbeSettings", "register_probe", "run_probe"]
