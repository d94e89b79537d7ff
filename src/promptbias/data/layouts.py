"""Turn a dataset folder in its CoOp on-disk layout into the normalised split.

    split = load_layout(registry.get("dtd"), Path("data/raw/dtd"))
    # {"dataset", "classnames", "template", "train": [[rel_path, label, classname], …], "val", "test"}

``rel_path`` is relative to the dataset folder (``image_dir`` + the path in the split file), so the
result does not depend on where the folder lives. Parsers, by ``DatasetSpec.layout``:

* ``split_json`` — CoOp's ``split_zhou_<Name>.json`` (or the demo generator's ``split_<name>.json``):
  ``{"train"|"val"|"test": [[path relative to image_dir, label, classname], …]}``, kept in file order.
* ``fgvc`` — FGVCAircraft's ``images_variant_{train,val,test}.txt`` (``<id> <variant words…>``); labels
  are the line order of ``variants.txt``; images are ``images/<id>.jpg``.
* ``imagenet`` — ``images/{train,val}/<wnid>/*`` with labels = sorted wnid folders, class names from
  ``classnames.txt`` (``<wnid> <name…>``); official val is the test set. CoOp also uses it as val,
  which would select on test images, so here ``val`` is empty and the split says
  ``"val_from_train": true``: :func:`promptbias.data.splits.make_fewshot` draws val from the train
  images outside the few-shot set. Files within a class are sorted by name (CoOp uses ``os.listdir``
  order, which depends on the filesystem), so the output is the same on every machine, and the
  few-shot subsets differ from CoOp's in general. A flat ``images/val/`` (how the ILSVRC2012 val tar
  unpacks, no class folders) is refused with how to sort it.

``classnames`` lists the prompt-ready name per label (underscores → spaces); items keep the raw class
name of the split file, as Dassl does. An empty train or test split is refused (one line naming the
file or folder it came from), so a dataset that would train or evaluate on nothing never fetches.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from promptbias.data.registry import DatasetSpec, clean_classname
from promptbias.errors import UserError

Item = list  # [rel_path: str, label: int, classname: str]
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def load_layout(spec: DatasetSpec, folder: Path) -> dict[str, Any]:
    """The normalised split of ``spec`` read from ``folder``; a missing file is a UserError."""
    folder = Path(folder)
    parser = {"split_json": _split_json, "fgvc": _fgvc, "imagenet": _imagenet}.get(spec.layout)
    if parser is None:
        raise ValueError(f"{spec.name}: unknown layout {spec.layout!r}")
    splits = parser(spec, folder)
    classnames = _classnames(spec, splits)
    for name in ("train", "test"):
        if not splits[name]:
            raise UserError(
                f"{_source_of(spec, folder, name)}: the {name} split of {spec.name} is empty — "
                f"{_empty_fix(spec, name)}, then rerun `promptbias fetch {spec.name}`"
            )
    out: dict[str, Any] = {
        "dataset": spec.name,
        "classnames": classnames,
        "template": spec.template,
        "train": splits["train"],
        "val": splits["val"],
        "test": splits["test"],
    }
    if spec.layout == "imagenet":
        out["val_from_train"] = True
    return out


def _source_of(spec: DatasetSpec, folder: Path, split: str) -> Path:
    """The file or folder a split of ``spec`` is read from."""
    if spec.layout == "fgvc":
        return folder / f"images_variant_{split}.txt"
    if spec.layout == "imagenet":
        return folder / spec.image_dir / ("val" if split == "test" else split)
    assert spec.split_file is not None
    return folder / spec.split_file


def _empty_fix(spec: DatasetSpec, split: str) -> str:
    if spec.layout == "imagenet":
        return (
            f"put its images in {spec.image_dir}/{'val' if split == 'test' else split}/<wnid>/ class folders"
        )
    if spec.layout == "fgvc":
        return "restore the file from fgvc-aircraft-2013b.tar.gz"
    return f"replace the file with CoOp's {spec.split_file}"


def _required(spec: DatasetSpec, path: Path) -> Path:
    if not path.exists():
        raise UserError(f"{spec.name}: missing {path} — place it there (see `promptbias fetch {spec.name}`)")
    return path


def _join(image_dir: str, rel: str) -> str:
    rel = rel.replace("\\", "/")
    if rel.startswith("/") or ".." in rel.split("/"):
        raise UserError(f"split entry {rel!r} is not a relative path inside the dataset — fix the split file")
    return f"{image_dir}/{rel}" if image_dir else rel


def _split_json(spec: DatasetSpec, folder: Path) -> dict[str, list[Item]]:
    assert spec.split_file is not None
    path = _required(spec, folder / spec.split_file)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg}) — delete it and fetch again") from None
    out: dict[str, list[Item]] = {}
    for split in ("train", "val", "test"):
        if split not in raw:
            raise UserError(f"{path}: no '{split}' list — this is not a CoOp split file; fetch it again")
        out[split] = [[_join(spec.image_dir, str(p)), int(label), str(name)] for p, label, name in raw[split]]
    return out


def _fgvc(spec: DatasetSpec, folder: Path) -> dict[str, list[Item]]:
    variants = [
        line.strip()
        for line in _required(spec, folder / "variants.txt").read_text().splitlines()
        if line.strip()
    ]
    label_of = {name: i for i, name in enumerate(variants)}
    out: dict[str, list[Item]] = {}
    for split in ("train", "val", "test"):
        path = _required(spec, folder / f"images_variant_{split}.txt")
        items: list[Item] = []
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            image_id, _, variant = line.strip().partition(" ")
            if variant not in label_of:
                raise UserError(
                    f"{path}: variant {variant!r} is not in variants.txt — the files do not match"
                )
            items.append([_join(spec.image_dir, f"{image_id}.jpg"), label_of[variant], variant])
        out[split] = items
    return out


def _imagenet(spec: DatasetSpec, folder: Path) -> dict[str, list[Item]]:
    names: dict[str, str] = {}
    for line in _required(spec, folder / "classnames.txt").read_text().splitlines():
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            names[wnid] = name
    out: dict[str, list[Item]] = {}
    for split in ("train", "val"):
        split_dir = _required(spec, folder / spec.image_dir / split)
        wnids = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
        loose = sum(1 for e in os.scandir(split_dir) if e.is_file() and e.name.lower().endswith(_IMAGE_EXT))
        if loose:
            how = " (how ILSVRC2012_img_val.tar unpacks)" if split == "val" else ""
            raise UserError(
                f"{split_dir}: {loose} image(s) lie directly in it, not in <wnid>/ class folders{how} — move "
                f"each into {split_dir}/<wnid>/ by its label (e.g. run valprep.sh from "
                f"github.com/soumith/imagenetloader.torch inside it), then rerun `promptbias fetch {spec.name}`"
            )
        items: list[Item] = []
        for label, wnid in enumerate(wnids):
            if wnid not in names:
                raise UserError(
                    f"{split_dir / wnid}: folder not listed in classnames.txt — remove it or fix the file"
                )
            files = sorted(
                e.name
                for e in os.scandir(split_dir / wnid)
                if not e.name.startswith(".") and e.name.lower().endswith(_IMAGE_EXT)
            )
            items += [[f"{spec.image_dir}/{split}/{wnid}/{f}", label, names[wnid]] for f in files]
        out["test" if split == "val" else "train"] = items
    out["val"] = []  # drawn from train at split time (make_fewshot: val_from_train)
    return out


def _classnames(spec: DatasetSpec, splits: dict[str, list[Item]]) -> list[str]:
    by_label: dict[int, str] = {}
    for split in ("train", "val", "test"):
        for _, label, name in splits[split]:
            if by_label.setdefault(label, name) != name:
                raise UserError(
                    f"{spec.name}: label {label} is both {by_label[label]!r} and {name!r} — the split file is inconsistent"
                )
    n = max(by_label) + 1 if by_label else 0
    missing = [i for i in range(n) if i not in by_label]
    if missing:
        raise UserError(f"{spec.name}: labels {missing[:5]} have no images — the split file is incomplete")
    return [clean_classname(by_label[i]) for i in range(n)]


def missing_images(folder: Path, split: dict[str, Any]) -> list[str]:
    """Relative paths referenced by the split that do not exist under ``folder`` (each checked once)."""
    seen: set[str] = set()
    missing: list[str] = []
    for name in ("train", "val", "test"):
        for rel, _, _ in split[name]:
            if rel in seen:
                continue
            seen.add(rel)
            if not os.path.isfile(folder / rel):
                missing.append(rel)
    return missing
