"""How a stage gets its backbone, its dataset and its (trained) method.

clip = load_backbone(cfg)                                   # frozen CLIP on the configured device
ds = dataset_info(cfg, "eurosat")                           # classnames + template + split
ds = dataset_info(cfg, "eurosat-novel")                     # a base-to-novel class view (ds.data: eurosat)
method = load_method(cfg, clip, ds, "prompt", seed=1)       # zeroshot: built; others: trained params
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from promptbias import paths
from promptbias.config import method_kind, method_trains
from promptbias.errors import UserError


@dataclass
class DatasetInfo:
    name: str
    classnames: list[str]
    template: str
    split: dict[str, Any]  # the normalised split (data/raw/<ds>.json), kept to the view's classes
    data: str = ""  # the dataset whose files it reads (a class view's dataset; else the name)
    raw_split: dict[str, Any] | None = None  # the dataset's full split (the few-shot files are drawn from it)

    def __post_init__(self) -> None:
        self.data = self.data or self.name
        self.raw_split = self.raw_split if self.raw_split is not None else self.split


def dataset_info(cfg: dict[str, Any], dataset: str) -> DatasetInfo:
    """A dataset, or a class view of one (``dtd-base``/``dtd-novel``: :mod:`promptbias.protocols`)."""
    from promptbias import protocols
    from promptbias.data import registry, splits

    base, view = protocols.parse(dataset)
    spec = registry.get(base)  # an unknown name fails here, listing the known ones
    raw = splits.load_split(cfg["data"]["root"], base)
    split = protocols.apply_view(raw, view) if view else raw
    template = split.get("template") or spec.template
    return DatasetInfo(
        name=dataset,
        classnames=list(split["classnames"]),
        template=template,
        split=split,
        data=base,
        raw_split=raw,
    )


def set_threads(n: int) -> None:
    """Fix torch's CPU threads (results on a CPU depend on them): never the engine's OMP_NUM_THREADS."""
    import torch

    torch.set_num_threads(int(n))


def load_backbone(cfg: dict[str, Any], device: str | None = None):
    """The frozen CLIP of ``model.*`` on ``device`` (claims a free GPU slot first when on CUDA), with
    torch's CPU threads fixed to ``cpu_threads``."""
    from promptbias.model import load_clip, resolve_device

    set_threads(cfg["cpu_threads"])
    resolved = resolve_device(device or cfg["device"])
    if resolved.type == "cuda":
        from promptbias.devices import claim_gpu_slot

        claim_gpu_slot()  # sets CUDA_VISIBLE_DEVICES to a free GPU before CUDA initialises
        resolved = resolve_device("cuda")
    return load_clip(cfg["model"]["name"], cfg["model"]["pretrained"], device=resolved)


def load_method(
    cfg: dict[str, Any], clip, ds: DatasetInfo, method_id: str, seed: int, check_splits: bool = False
):
    """Zero-shot is built from the template; trained methods are read from their run folder, after
    checking that this config's training job wrote them (:func:`check_trained_for`; ``check_splits``:
    also that it trained on the split files there now). A novel-class view reads the tensors its base
    view learned (:func:`promptbias.protocols.train_source`), with its own class names."""
    from promptbias import protocols
    from promptbias.methods import Method, build_method

    kind = method_kind(method_id)
    if not method_trains(method_id):  # built from the template alone
        return build_method(kind, clip, ds.classnames, ds.template)
    source = protocols.train_source(ds.name)
    path = paths.run_file(source, method_id, seed, paths.PARAMS)
    if not path.is_file():
        raise UserError(
            f"{path}: no trained parameters — run `{_train_command(source, method_id, seed)}` first"
        )
    method = Method.load(path, clip, ds.classnames, ds.template, expect_kind=kind)
    saved = Method.read_header(path).get("identity")
    check_trained_for(cfg, path, saved, source, method_id, seed, check_splits)
    return method


# runtime knobs of the training job: they change its bits, not what it is (evaluate may run elsewhere)
_RUNTIME_KEYS = ("device", "cpu_threads")


def check_trained_for(
    cfg: dict[str, Any],
    path: Any,
    saved: dict[str, Any] | None,
    dataset: str,
    method_id: str,
    seed: int,
    check_splits: bool = True,
) -> None:
    """UserError unless ``saved`` (a params file's training identity) is the identity of this config's
    training job: its params values and backbone weights (and its split files, with ``check_splits``)."""
    from promptbias import identity
    from promptbias.pipeline.plan import job_values

    retrain = f"retrain: `{_train_command(dataset, method_id, seed)}`"
    if not isinstance(saved, dict) or "params" not in saved:
        raise UserError(
            f"{path}: no training identity in its header (not written by `promptbias train`) — {retrain}"
        )
    name, params = job_values(cfg, "train", {"dataset": dataset, "method": method_id, "seed": seed})
    if saved.get("job") != name:
        raise UserError(f"{path}: written by job {saved.get('job')}, not {name} — {retrain}")
    differ = [k for k in identity.differences(saved["params"], params) if not k.startswith(_RUNTIME_KEYS)]
    if differ:
        raise UserError(
            f"{path}: trained with other settings than this config ({', '.join(differ[:3])}) — {retrain}"
        )
    if saved.get("backbone") != identity.backbone(cfg["model"]):
        raise UserError(
            f"{path}: trained on other backbone weights than {cfg['model']['pretrained']} — {retrain}"
        )
    if not check_splits:
        return
    root, shots = cfg["data"]["root"], cfg["data"]["shots"]
    from promptbias.data.splits import split_digests
    from promptbias.protocols import data_of

    for key, digest in split_digests(root, dataset, shots, seed).items():
        if saved.get("inputs", {}).get(key) != digest:
            which = (
                paths.raw_json(root, data_of(dataset))
                if key == "raw_split"
                else paths.split_json(root, data_of(dataset), shots, seed)
            )
            raise UserError(f"{path}: trained on another version of {which} — {retrain}")


def _train_command(dataset: str, method_id: str, seed: int) -> str:
    return f"promptbias train --dataset {dataset} --method {method_id} --seed {seed}"
