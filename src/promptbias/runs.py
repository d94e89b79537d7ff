"""Where a run's files live, and how a stage gets its backbone and (trained) method.

    clip = load_backbone(cfg)                                   # frozen CLIP on the configured device
    ds = dataset_info(cfg, "eurosat")                           # classnames + template + split
    method = load_method(cfg, clip, ds, "prompt", seed=1)       # zeroshot: built; others: trained params
    run_dir("eurosat", "prompt", 1) / "params.safetensors"

All paths are relative to the working directory (the repository root), the same for Snakemake and DVC.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptbias.config import method_kind
from promptbias.errors import UserError

RUNS = Path("runs")
METRICS = Path("metrics")
PROBES = Path("probes")
RESULTS = Path("results")


def run_dir(dataset: str, method: str, seed: int) -> Path:
    return RUNS / dataset / method / f"seed{seed}"


def metrics_path(dataset: str, method: str, seed: int) -> Path:
    return METRICS / dataset / method / f"seed{seed}.json"


def probe_dir(dataset: str, method: str, seed: int) -> Path:
    return PROBES / dataset / method / f"seed{seed}"


@dataclass
class DatasetInfo:
    name: str
    classnames: list[str]
    template: str
    split: dict[str, Any]  # the normalised split (data/raw/<ds>.json)


def dataset_info(cfg: dict[str, Any], dataset: str) -> DatasetInfo:
    from promptbias.data import registry, splits

    spec = registry.get(dataset)  # an unknown name fails here, listing the known ones
    split = splits.load_split(cfg["data"]["root"], dataset)
    template = split.get("template") or spec.template
    return DatasetInfo(name=dataset, classnames=list(split["classnames"]), template=template, split=split)


def load_backbone(cfg: dict[str, Any], device: str | None = None):
    """The frozen CLIP of ``model.*`` on ``device`` (claims a free GPU slot first when on CUDA)."""
    from promptbias.model import load_clip, resolve_device

    wanted = device or cfg.get("device", "auto")
    resolved = resolve_device(wanted)
    if resolved.type == "cuda":
        from promptbias.devices import claim_gpu_slot

        claim_gpu_slot()  # sets CUDA_VISIBLE_DEVICES to a free GPU before CUDA initialises
        resolved = resolve_device("cuda")
    return load_clip(cfg["model"]["name"], cfg["model"].get("pretrained"), device=resolved)


def load_method(cfg: dict[str, Any], clip, ds: DatasetInfo, method_id: str, seed: int):
    """Zero-shot is built from the template; trained methods are read from their run folder."""
    from promptbias.methods import Method, build_method

    kind = method_kind(method_id)
    if kind == "zeroshot":
        return build_method("zeroshot", clip, ds.classnames, ds.template)
    path = run_dir(ds.name, method_id, seed) / "params.safetensors"
    if not path.is_file():
        raise UserError(
            f"{path}: no trained parameters — run `promptbias train --dataset {ds.name} --method {method_id} --seed {seed}` first"
        )
    return Method.load(path, clip, ds.classnames, ds.template, expect_kind=kind)
