"""Numeric precision of a forward pass: bf16 autocast on CUDA (``precision: auto``), fp32 on the CPU.

with autocast(device, precision):          # precision: auto | fp32 | bf16 (model.precision)
    logits = method.logits(model, x)
precision_name(device, precision)          # "bf16" | "fp32", as recorded in train.json
"""

from __future__ import annotations

import contextlib
from typing import Any


def uses_bf16(device: Any, precision: str) -> bool:
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def precision_name(device: Any, precision: str) -> str:
    return "bf16" if uses_bf16(device, precision) else "fp32"


def autocast(device: Any, precision: str) -> contextlib.AbstractContextManager:
    import torch

    if not uses_bf16(device, precision):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
