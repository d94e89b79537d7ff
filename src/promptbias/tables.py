"""The tidy probe-table columns, shared by the probes (writers) and the renderers (readers).

Kept in a module of its own so that ``promptbias render`` can check tables without importing torch.
"""

PROBE_COLUMNS: tuple[str, ...] = (
    "dataset",
    "method",
    "seed",
    "probe",
    "branch",
    "layer",  # -1 = not per layer
    "head",  # -1 = mean over heads
    "variant",
    "key",
    "value",
    "n",  # images (or captions) averaged
)
