"""CoOp/Dassl-compatible few-shot subsets, and readers for the split files.

    split = load_split(root, "dtd")                      # data/raw/dtd.json (the normalised split)
    few = make_fewshot(split, shots=16, seed=1)          # {"dataset", "shots", "seed", "train", "val"}
    few = load_fewshot(root, "dtd", 16, 1)               # data/splits/dtd/shot16_seed1.json, verified
    few = load_fewshot(root, "dtd-base", 16, 1)          # the same file, kept to the base classes

Sampling reproduces Dassl's ``generate_fewshot_dataset`` as CoOp calls it: Python's Mersenne Twister
seeded with S; items grouped by label in order of first appearance; per class
``random.sample(items, K)`` (all items, drawing nothing, when a class has fewer); train first, then
val with min(K, 4) from the same random stream. Given the same split file the subsets equal the
reference ones. Items keep their relative paths, so the output is the same on every machine.

ImageNet is the one departure (its split says ``"val_from_train": true``): CoOp's val is its test set,
so selecting on val would select on test images. Its val is instead min(K, 4) per class drawn, from the
same random stream right after train, from the train images *not* in the K-shot train subset —
disjoint from both train and test, and a function of the seed. The train subset is unchanged.

Every read of ``data/raw/<ds>.json`` checks its entries (:mod:`promptbias.data.split_check`): a label
outside the class range, a name that disagrees with its label, or a path that is absolute, not normalised
or repeated is refused in one line naming the file and the entry, before anything is computed from it. A
few-shot file is valid when it equals the subset that checked split gives; one that does not is refused,
naming its first bad entry when it has one.

A class view of base-to-novel (``dtd-base``, :mod:`promptbias.protocols`) reads the split files of its
dataset and keeps the view's classes, as CoCoOp subsamples its few-shot subsets: no split file of its own.

A test-only dataset (an ImageNet variant, ``registry.is_test_only``) has no few-shot split: nothing is
sampled or written, :func:`refuse_test_only` explains that to ``split``/``train``, and its evaluation
view (``imagenet_a-from_imagenet``) gets the empty subset from :func:`load_fewshot`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from promptbias import paths, protocols
from promptbias.data import split_check
from promptbias.data.registry import REGISTRY, is_test_only
from promptbias.errors import UserError
from promptbias.io import read_json

VAL_SHOTS_CAP = 4


def sample_per_class(items: list[Any], shots: int, rng: random.Random) -> list[Any]:
    """K items per label (label = item[1]), labels in order of first appearance; all if fewer."""
    if shots < 1:
        return list(items)
    groups: dict[int, list[Any]] = {}
    for item in items:
        groups.setdefault(item[1], []).append(item)
    out: list[Any] = []
    for group in groups.values():
        out.extend(rng.sample(group, shots) if len(group) >= shots else group)
    return out


def make_fewshot(split: dict[str, Any], shots: int, seed: int) -> dict[str, Any]:
    """The K-shot train subset and min(K, 4)-shot val subset for one seed."""
    rng = random.Random(seed)  # the same stream as random.seed(seed) on the global generator
    train = sample_per_class(split["train"], shots, rng)
    if split.get("val_from_train"):
        chosen = {item[0] for item in train}
        pool = [item for item in split["train"] if item[0] not in chosen]
    else:
        pool = split["val"]
    val = sample_per_class(pool, min(shots, VAL_SHOTS_CAP), rng)
    return {"dataset": split["dataset"], "shots": shots, "seed": seed, "train": train, "val": val}


def load_split(root: Path | str, dataset: str) -> dict[str, Any]:
    """The normalised split written by ``promptbias fetch``."""
    path = paths.raw_json(root, dataset)
    if not path.is_file():
        raise UserError(
            f"{path}: dataset {dataset!r} is not fetched — run `promptbias fetch {dataset}` first"
        )
    remake = f"promptbias fetch {dataset}"
    split = _read(path, remake)
    spec = REGISTRY.get(dataset)
    if spec is not None and spec.layout == "imagenet" and not split.get("val_from_train"):
        raise UserError(
            f"{path}: written by an older promptbias (val = the test set) — run `promptbias fetch {dataset}` "
            "again to draw val from train images"
        )
    return split_check.check_split(split, path, f"delete it and rerun `{remake}`")


def _read(path: Path, remake: str) -> dict[str, Any]:
    """A split json; an unreadable one is a UserError saying how to remake it."""
    try:
        data = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: not valid JSON (damaged) — delete it and run `{remake}` again") from None
    if not isinstance(data, dict) or not isinstance(data.get("train"), list):
        raise UserError(f"{path}: not a promptbias split file — delete it and run `{remake}` again")
    return data


def refuse_test_only(dataset: str, what: str) -> None:
    """UserError when ``dataset`` is test-only: ``what`` (a split, a training run) needs train images."""
    if is_test_only(dataset):
        source = REGISTRY[dataset].shift_of
        raise UserError(
            f"{dataset}: test-only ({REGISTRY[dataset].display_name} has no train images), so it has no {what} — "
            f"it is evaluated with {source}'s tensors as `{protocols.transfer_id(dataset, str(source))}` "
            "(params protocols: [..., cross_dataset] + cross_dataset.domain_targets)"
        )


def split_digests(root: Path | str, dataset: str, shots: int, seed: int) -> dict[str, str]:
    """The sha256 of the normalised split and of the few-shot split a training job reads (a class view:
    its dataset's files)."""
    from promptbias.identity import sha256_file

    dataset = protocols.data_of(dataset)
    return {
        "raw_split": sha256_file(paths.raw_json(root, dataset)),
        "fewshot_split": sha256_file(paths.split_json(root, dataset, shots, seed)),
    }


def load_fewshot(
    root: Path | str, dataset: str, shots: int, seed: int, split: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The few-shot subset written by ``promptbias split`` — refused unless it is exactly the subset
    that the normalised split gives for (shots, seed): a hand-edited or stale file never trains.

    ``dataset`` may be a class view (``dtd-base``): its dataset's subset kept to the view's classes;
    ``split`` is then the dataset's full normalised split, not the view's. A test-only dataset's transfer
    view (``imagenet_a-from_imagenet``) gets the empty subset (no file); the dataset itself is refused."""
    base, view = protocols.parse(dataset)
    if is_test_only(base) and protocols.transfer_source(view):  # nothing to sample: no train, no val
        return make_fewshot(split if split is not None else load_split(root, base), shots, seed)
    if view is not None:
        full = split if split is not None else load_split(root, base)
        return protocols.fewshot_view(load_fewshot(root, base, shots, seed, split=full), full, view)
    refuse_test_only(dataset, "few-shot split")
    path = paths.split_json(root, dataset, shots, seed)
    remake = f"promptbias split {dataset} --shots {shots} --seed {seed}"
    if not path.is_file():
        raise UserError(f"{path}: few-shot split missing — run `{remake}` first")
    split = split if split is not None else load_split(root, dataset)
    few = _read(path, remake)
    if few != make_fewshot(split, shots, seed):  # equal: valid, as the checked split it is drawn from
        if not few["train"]:
            raise UserError(f"{path}: the train split is empty (edited?) — run `{remake}` again")
        raise UserError(
            f"{path}: not the {shots}-shot subset of seed {seed} of {paths.raw_json(root, dataset)} (edited, or made "
            f"from another version of it{_first_bad_entry(few, path, split)}) — run `{remake}` again"
        )
    return few


def _first_bad_entry(few: dict[str, Any], path: Path, split: dict[str, Any]) -> str:
    """``; <entry>: <problem>`` for the first entry of a few-shot file the split checks refuse, else ""."""
    try:
        split_check.check_fewshot(few, path, split, "")
    except split_check.EntryError as exc:
        return f"; {exc.where}: {exc.problem}"
    except UserError:
        pass
    return ""
