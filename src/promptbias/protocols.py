"""Evaluation protocols beyond the few-shot sweep, and the dataset views they run on — torch-free.

    from promptbias import protocols
    protocols.enabled(cfg, "base2novel")     # params `protocols` names it (the few-shot sweep is always on)
    protocols.view_id("dtd", "novel")        # "dtd-novel": the dataset id of runs/, metrics/ and probes/
    protocols.parse("dtd-novel")             # ("dtd", "novel"); ("dtd", None) for a plain dataset
    protocols.data_of("dtd-novel")           # "dtd": whose files (data/raw, splits, cache) it reads
    protocols.train_source("dtd-novel")      # "dtd-base": the run folder whose learned tensors it evaluates
    protocols.transfer_id("dtd", "imagenet") # "dtd-from_imagenet": ImageNet's tensors on DTD (cross-dataset)
    protocols.domain_targets(cfg)            # ["imagenetv2", …]: the ImageNet variants evaluated (DG)
    protocols.apply_view(split, "base")      # CoCoOp's subsample_classes on train, val and test + classnames

**base2novel** (CoCoOp's base-to-new protocol). A dataset's classes are split in half by label order
exactly as CoCoOp's ``subsample_classes``: the labels of the first list (the train split) sorted,
m = ceil(n/2), base = the first m, novel = the rest, each relabelled 0.. in that order, and the same
selection applied to every list (train, val, test); the class names follow the selected labels. The
view ``<ds>-base`` trains on the base classes of the seed's 16-shot split (CoCoOp draws the few-shot
subset from all classes first and subsamples it after, which this keeps) and is evaluated on the base
test images with the base class names; ``<ds>-novel`` evaluates the *same* learned tensors
(``runs/<ds>-base/…``) on the novel test images with the novel class names. A view is a dataset id of
its own, so a base-trained run (``runs/dtd-base/prompt/seed1``) never collides with the few-shot run on
all classes (``runs/dtd/prompt/seed1``), nor do their metrics and probe tables. Dataset names never
contain ``-`` (the registry's are ``[a-z0-9_]``), so a view id parses back unambiguously.

**cross_dataset** (CoCoOp's cross-dataset transfer). The tensors of the source's few-shot run (all its
classes, ``runs/<source>/…``: the sweep's own run, nothing is retrained) are evaluated on every other sweep
dataset with that dataset's class names: the view ``<target>-from_<source>`` (all the target's classes)
reads the target's files and the source's run. The source is params ``cross_dataset.source``.

Domain generalisation rides on the same protocol: with the source ``imagenet``, each ImageNet variant of
params ``cross_dataset.domain_targets`` (ImageNet-V2, -Sketch, -A, -R: test-only datasets that share
ImageNet's classes, ``registry.DatasetSpec.shift_of``) is a view ``<variant>-from_imagenet`` as well —
evaluated with ImageNet's few-shot tensors and with zero-shot CLIP (the variants have no sweep run of
their own to take it from), never trained, split or probed. -A and -R keep their 200 classes. A variant
whose ``shift_of`` is not the source is not planned (its classes are not the source's).
"""

from __future__ import annotations

import math
from typing import Any

from promptbias.data.registry import REGISTRY
from promptbias.errors import UserError

FEWSHOT = "fewshot"
BASE2NOVEL = "base2novel"
CROSS_DATASET = "cross_dataset"
PROTOCOLS = (FEWSHOT, BASE2NOVEL, CROSS_DATASET)

BASE, NOVEL = "base", "novel"
VIEWS = (BASE, NOVEL)
SEP = "-"
FROM = "from_"  # the view of a cross-dataset transfer: from_<source>


def enabled(cfg: dict[str, Any], protocol: str) -> bool:
    return protocol in cfg.get("protocols", (FEWSHOT,))


def domain_targets(cfg: dict[str, Any]) -> list[str]:
    """The test-only variants of the cross-dataset source evaluated with its tensors (domain
    generalisation): params ``cross_dataset.domain_targets`` whose ``shift_of`` is the source, when the
    cross_dataset protocol is on; else none."""
    if not enabled(cfg, CROSS_DATASET):
        return []
    section = cfg.get("cross_dataset") or {}
    source = section.get("source")
    return [
        d for d in section.get("domain_targets") or [] if d in REGISTRY and REGISTRY[d].shift_of == source
    ]


def view_id(dataset: str, view: str) -> str:
    return f"{dataset}{SEP}{view}"


def transfer_id(target: str, source: str) -> str:
    return view_id(target, f"{FROM}{source}")


def parse(dataset_id: str) -> tuple[str, str | None]:
    """(dataset, view) of a dataset id; view is None for a plain dataset."""
    head, sep, tail = dataset_id.rpartition(SEP)
    if sep and head and (tail in VIEWS or (tail.startswith(FROM) and len(tail) > len(FROM))):
        return head, tail
    return dataset_id, None


def transfer_source(view: str | None) -> str | None:
    """The source dataset of a cross-dataset view (``from_imagenet`` → ``imagenet``); None for others."""
    return view[len(FROM) :] if view and view.startswith(FROM) else None


def data_of(dataset_id: str) -> str:
    """The dataset whose files a (view) id reads: data/raw/<ds>, its split files and its image cache."""
    return parse(dataset_id)[0]


def train_source(dataset_id: str) -> str:
    """The dataset id whose run folder holds the tensors evaluated on ``dataset_id``."""
    dataset, view = parse(dataset_id)
    if view == NOVEL:
        return view_id(dataset, BASE)
    return transfer_source(view) or dataset_id


def selected_labels(items: list[Any], view: str) -> list[int]:
    """CoCoOp's half of the labels present in ``items``: sorted, base = first ceil(n/2), novel = the rest."""
    labels = sorted({int(item[1]) for item in items})
    m = math.ceil(len(labels) / 2)
    return labels[:m] if view == BASE else labels[m:]


def subsample_classes(*lists: list[Any], view: str) -> list[list[Any]]:
    """Each list kept to the view's classes (taken from the first list), labels remapped to 0..; items
    stay ``[path, label, classname]`` in their order."""
    if view not in VIEWS:
        raise UserError(f"class view {view!r}: unknown — use one of {', '.join(VIEWS)}")
    selected = selected_labels(lists[0], view)
    relabel = {y: i for i, y in enumerate(selected)}
    return [
        [[item[0], relabel[int(item[1])], *item[2:]] for item in items if int(item[1]) in relabel]
        for items in lists
    ]


def apply_view(split: dict[str, Any], view: str) -> dict[str, Any]:
    """The normalised split restricted to the view's classes (train, val, test and classnames); a
    cross-dataset view keeps every class of its target."""
    if transfer_source(view):
        return split
    train, val, test = subsample_classes(
        split["train"], split.get("val") or [], split.get("test") or [], view=view
    )
    selected = selected_labels(split["train"], view)
    classnames = [split["classnames"][y] for y in selected]
    return {**split, "classnames": classnames, "train": train, "val": val, "test": test, "view": view}


def fewshot_view(few: dict[str, Any], split: dict[str, Any], view: str) -> dict[str, Any]:
    """A seed's few-shot subset restricted to the view's classes, as CoCoOp subsamples its few-shot train
    and val (the classes taken from the few-shot train). They must be the classes the full train split
    gives (every class has train images), else the view's test and train would disagree. A cross-dataset
    view keeps every class."""
    if transfer_source(view):
        return few
    if selected_labels(few["train"], view) != selected_labels(split["train"], view):
        raise UserError(
            f"{few['dataset']}: the few-shot train split lacks classes of the train split, so its {view} "
            "classes differ from the test's — re-fetch the dataset and rerun `promptbias split`"
        )
    train, val = subsample_classes(few["train"], few["val"], view=view)
    return {**few, "train": train, "val": val, "view": view}
