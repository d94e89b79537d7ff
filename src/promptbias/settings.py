"""Typed, frozen views of the validated params, built once per command.

    s = Settings.of(cfg)                  # cfg: validated, layered params (promptbias.config.load_params)
    s.train.epochs, s.model.pretrained, s.data.root, s.demo.pretrain_steps
    s.method("prompt-d3-n4")              # MethodSettings(id, kind, lr, hparams): depth 3, 4 tokens each

The schema requires every key and ``params.yaml`` holds every default (a layered file overrides some),
so no field here has a default: a missing key is an error at validation, never a silent fallback.
Provenance works on the raw values (:mod:`promptbias.pipeline.bind` records exactly the keys a job
reads); these classes are how the code reads them. The probes read theirs through
:class:`promptbias.probes.common.ProbeSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from promptbias.config import method_lr, method_settings, method_trains


@dataclass(frozen=True)
class ModelSettings:
    name: str  # an open_clip model name, or a config shipped in promptbias/model/configs
    pretrained: str | None  # an open_clip tag, a weights file, or None (random init: tests)
    precision: str  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16


@dataclass(frozen=True)
class DataSettings:
    root: str
    source_root: str | None  # an existing CoOp DATA folder to link instead of downloading
    shots: int
    cache_images: bool
    num_workers: int  # decoding threads (speed only: never a params key of a stage)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    momentum: float
    weight_decay: float
    warmup_epochs: int
    warmup_lr: float
    eval_batch_size: int
    crop_scale: tuple[float, float]  # RandomResizedCrop area range


@dataclass(frozen=True)
class MethodSettings:
    """One method id: its kind, its learning rate (None for zero-shot) and its class's hyper-parameters."""

    id: str
    kind: str
    lr: float | None
    hparams: MappingProxyType[str, Any]


@dataclass(frozen=True)
class DemoSettings:
    world_seed: int
    pretrain_seed: int
    model: str
    clip_dir: str
    pretrain_steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    corpus_size: int  # null in the params → pretrain_steps × batch_size
    texture_batch_share: float
    eval_datasets: tuple[str, ...]
    probe_shots: int
    pretrain_threads: int


@dataclass(frozen=True)
class Settings:
    model: ModelSettings
    device: str
    cpu_threads: int
    data: DataSettings
    train: TrainSettings
    demo: DemoSettings
    methods: MappingProxyType[str, Any]  # the methods section (per-kind hyper-parameters): see method()

    @classmethod
    def of(cls, cfg: dict[str, Any]) -> Settings:
        demo = {k: v for k, v in cfg["demo"].items() if k != "enabled"}
        if demo["corpus_size"] is None:
            demo["corpus_size"] = int(demo["pretrain_steps"]) * int(demo["batch_size"])
        return cls(
            model=ModelSettings(**cfg["model"]),
            device=cfg["device"],
            cpu_threads=int(cfg["cpu_threads"]),
            data=DataSettings(**cfg["data"]),
            train=TrainSettings(**{**cfg["train"], "crop_scale": tuple(cfg["train"]["crop_scale"])}),
            demo=DemoSettings(**{**demo, "eval_datasets": tuple(demo["eval_datasets"])}),
            methods=MappingProxyType(cfg["methods"]),
        )

    def method(self, method_id: str) -> MethodSettings:
        cfg = {"methods": dict(self.methods)}
        kind, hparams = method_settings(cfg, method_id)
        lr = method_lr(cfg, method_id) if method_trains(method_id) else None
        return MethodSettings(method_id, kind, lr, MappingProxyType(hparams))
