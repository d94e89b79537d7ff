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
* ``imagenet_wnid`` — a test-only ImageNet variant with ``<image_dir>/<wnid>/*`` (ImageNet-Sketch's
  ``images/``, ImageNet-A's ``imagenet-a/``, ImageNet-R's ``imagenet-r/``): labels = the wnid folders
  present, sorted, as Dassl numbers them — so -A and -R (200 of the 1000 classes) get labels 0..199 in
  wnid order and the class names of those 200 from ``classnames.txt``; loose files (their README.txt)
  are ignored.
* ``imagenetv2`` — ImageNet-V2's ``<image_dir>/<0..999>/*``: folder ``i`` is the i-th class of
  ``classnames.txt`` (file order, as Dassl reads it); every class folder must be there.

A test-only split (``DatasetSpec.test_only``) has empty train and val lists and says ``"test_only": true``.

``classnames`` lists the prompt-ready name per label (underscores → spaces); items keep the raw class
name of the split file, as Dassl does. An empty train (except for a test-only dataset) or test split is
refused (one line naming the file or folder it came from), so a dataset that would train or evaluate on
nothing never fetches.

Every entry is checked (:mod:`promptbias.data.split_check`): a source file's own entries before they are
joined to ``image_dir`` (types, label range — the registry's ``num_classes`` when it declares one —, names,
paths; the error names the file and ``train[i]`` / the line), then the normalised split as a whole. A
hostile or broken mirror's split cannot name a file outside the dataset folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from promptbias.data import split_check
from promptbias.data.registry import DatasetSpec, clean_classname
from promptbias.errors import UserError

Item = list  # [rel_path: str, label: int, classname: str]
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def load_layout(spec: DatasetSpec, folder: Path) -> dict[str, Any]:
    """The normalised split of ``spec`` read from ``folder``; a missing file is a UserError."""
    folder = Path(folder)
    parser = _PARSERS.get(spec.layout)
    if parser is None:
        raise ValueError(f"{spec.name}: unknown layout {spec.layout!r}")
    splits = parser(spec, folder)
    classnames = _classnames(spec, splits, _shown(_source_of(spec, folder, "train")))
    for name in ("test",) if spec.test_only else ("train", "test"):
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
    if spec.test_only:
        out["test_only"] = True
    source = _source_of(spec, folder, "train")
    return split_check.check_split(out, _shown(source), _source_fix(spec))


def _shown(source: Path) -> Path:
    """The file to name in an error: a link of ``fetch --from`` (removed when the fetch fails) as its target."""
    return source.resolve() if source.is_symlink() else source


def _source_fix(spec: DatasetSpec) -> str:
    """How to replace a source file whose entries are refused (the file is named first in the error)."""
    return (
        "the file is damaged or not the published one: replace it with a verified copy (re-download it), "
        f"then rerun `promptbias fetch {spec.name}`"
    )


def _source_of(spec: DatasetSpec, folder: Path, split: str) -> Path:
    """The file or folder a split of ``spec`` is read from."""
    if spec.layout == "fgvc":
        return folder / f"images_variant_{split}.txt"
    if spec.layout == "imagenet":
        return folder / spec.image_dir / ("val" if split == "test" else split)
    if spec.layout in _TEST_FOLDER_LAYOUTS:
        return folder / spec.image_dir
    assert spec.split_file is not None
    return folder / spec.split_file


def _empty_fix(spec: DatasetSpec, split: str) -> str:
    if spec.layout == "imagenet":
        return (
            f"put its images in {spec.image_dir}/{'val' if split == 'test' else split}/<wnid>/ class folders"
        )
    if spec.layout == "fgvc":
        return "restore the file from fgvc-aircraft-2013b.tar.gz"
    if spec.layout in _TEST_FOLDER_LAYOUTS:
        classes = "<0..999>" if spec.layout == "imagenetv2" else "<wnid>"
        return f"put its images in {spec.image_dir}/{classes}/ class folders (CoOp's DATASETS.md layout)"
    return f"replace the file with CoOp's {spec.split_file}"


def _required(spec: DatasetSpec, path: Path) -> Path:
    if not path.exists():
        raise UserError(f"{spec.name}: missing {path} — place it there (see `promptbias fetch {spec.name}`)")
    return path


def _join(image_dir: str, rel: str) -> str:
    """``image_dir/rel`` (``rel`` checked by :mod:`~promptbias.data.split_check` first)."""
    return f"{image_dir}/{rel}" if image_dir else rel


def _split_json(spec: DatasetSpec, folder: Path) -> dict[str, list[Item]]:
    assert spec.split_file is not None
    path = _required(spec, folder / spec.split_file)
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise UserError(f"{_shown(path)}: not valid JSON ({why}) — delete it and fetch again") from None
    if not isinstance(raw, dict):
        raise UserError(f"{_shown(path)}: not a JSON object — this is not a CoOp split file; fetch it again")
    out: dict[str, list[Item]] = {}
    names: dict[int, str] = {}
    seen = split_check.Paths()
    for split in ("train", "val", "test"):
        if split not in raw:
            raise UserError(f"{path}: no '{split}' list — this is not a CoOp split file; fetch it again")
        split_check.check_items(
            raw[split],
            _shown(path),
            split,
            _source_fix(spec),
            n_classes=spec.num_classes,
            names=names,
            seen=seen,
        )
        out[split] = [[_join(spec.image_dir, p), label, name] for p, label, name in raw[split]]
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
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            image_id, _, variant = line.strip().partition(" ")
            if variant not in label_of:
                raise UserError(
                    f"{path}: variant {variant!r} is not in variants.txt — the files do not match"
                )
            problem = split_check.path_problem(f"{image_id}.jpg")
            if problem is not None or "/" in image_id:
                raise UserError(
                    f"{_shown(path)}: line {number}: {problem or f'the image id {image_id!r} names a folder'} — "
                    f"{_source_fix(spec)}"
                )
            items.append([_join(spec.image_dir, f"{image_id}.jpg"), label_of[variant], variant])
        out[split] = items
    return out


def _imagenet_classnames(spec: DatasetSpec, folder: Path) -> dict[str, str]:
    """``classnames.txt``: wnid → CLIP's class name, in file order."""
    names: dict[str, str] = {}
    for line in _required(spec, folder / "classnames.txt").read_text().splitlines():
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            names[wnid] = name
    return names


def _class_folders(spec: DatasetSpec, split_dir: Path, classes: str = "<wnid>", how: str = "") -> list[str]:
    """The class folders of ``split_dir``, sorted; images lying loose in it are refused."""
    _required(spec, split_dir)
    loose = sum(1 for e in os.scandir(split_dir) if e.is_file() and e.name.lower().endswith(_IMAGE_EXT))
    if loose:
        sort = (
            " (e.g. run valprep.sh from github.com/soumith/imagenetloader.torch inside it)"
            if spec.layout == "imagenet"
            else " (CoOp's DATASETS.md layout)"
        )
        raise UserError(
            f"{split_dir}: {loose} image(s) lie directly in it, not in {classes}/ class folders{how} — move "
            f"each into {split_dir}/{classes}/ by its label{sort}, then rerun `promptbias fetch {spec.name}`"
        )
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _images(spec: DatasetSpec, rel_dir: str, folder: Path) -> list[str]:
    """``rel_dir/<file>`` for the image files of one class folder, sorted by name (hidden ones skipped).
    A test-only dataset's class folder must hold images (its labels are the folders)."""
    files = sorted(
        e.name
        for e in os.scandir(folder / rel_dir)
        if not e.name.startswith(".") and e.name.lower().endswith(_IMAGE_EXT)
    )
    if not files and spec.test_only:
        raise UserError(
            f"{folder / rel_dir}: class folder without images — complete it from the {spec.display_name} "
            f"download (or remove the folder), then rerun `promptbias fetch {spec.name}`"
        )
    return [f"{rel_dir}/{f}" for f in files]


def _wnid_items(
    spec: DatasetSpec, folder: Path, rel: str, names: dict[str, str], how: str = ""
) -> list[Item]:
    """Items of ``rel/<wnid>/*``: labels = the sorted wnid folders present, names from classnames.txt."""
    items: list[Item] = []
    for label, wnid in enumerate(_class_folders(spec, folder / rel, how=how)):
        if wnid not in names:
            raise UserError(
                f"{folder / rel / wnid}: folder not listed in classnames.txt — remove it or fix the file"
            )
        items += [[path, label, names[wnid]] for path in _images(spec, f"{rel}/{wnid}", folder)]
    return items


def _imagenet(spec: DatasetSpec, folder: Path) -> dict[str, list[Item]]:
    names = _imagenet_classnames(spec, folder)
    train = _wnid_items(spec, folder, f"{spec.image_dir}/train", names)
    test = _wnid_items(spec, folder, f"{spec.image_dir}/val", names, " (how ILSVRC2012_img_val.tar unpacks)")
    return {"train": train, "val": [], "test": test}  # val: drawn from train at split time (val_from_train)


def _imagenet_wnid(spec: DatasetSpec, folder: Path) -> dict[str, list[Item]]:
    """ImageNet-Sketch, -A, -R: the wnid folders present, in sorted order, are the classes (test only)."""
    test = _wnid_items(spec, folder, spec.image_dir, _imagenet_classnames(spec, folder))
    return {"train": [], "val": [], "test": test}


def _imagenetv2(spec: DatasetSpec, folder: Path) -> dict[str, list[Item]]:
    """ImageNet-V2: folder ``i`` holds the i-th class of classnames.txt (all of them, test only)."""
    names = list(_imagenet_classnames(spec, folder).values())
    image_dir = folder / spec.image_dir
    present = set(_class_folders(spec, image_dir, classes="<0..999>"))
    expected = [str(i) for i in range(len(names))]
    extra = sorted(present - set(expected))
    if extra:
        raise UserError(
            f"{image_dir / extra[0]}: not a class folder 0..{len(names) - 1} of classnames.txt — remove it "
            "(or fix classnames.txt: ImageNet's 1000 lines)"
        )
    missing = [i for i in expected if i not in present]
    if missing:
        raise UserError(
            f"{image_dir / missing[0]}: class folder missing ({len(missing)} of {len(names)}) — extract "
            f"imagenetv2-matched-frequency.tar.gz again, then rerun `promptbias fetch {spec.name}`"
        )
    test = [
        [path, label, names[label]]
        for label in range(len(names))
        for path in _images(spec, f"{spec.image_dir}/{label}", folder)
    ]
    return {"train": [], "val": [], "test": test}


_PARSERS = {
    "split_json": _split_json,
    "fgvc": _fgvc,
    "imagenet": _imagenet,
    "imagenet_wnid": _imagenet_wnid,
    "imagenetv2": _imagenetv2,
}
_TEST_FOLDER_LAYOUTS = ("imagenet_wnid", "imagenetv2")


def _classnames(spec: DatasetSpec, splits: dict[str, list[Item]], source: Path) -> list[str]:
    """The cleaned class name of each label 0..n-1 (every label must have an image)."""
    by_label: dict[int, str] = {}
    for split in ("train", "val", "test"):
        for _, label, name in splits[split]:
            if by_label.setdefault(label, name) != name:
                raise UserError(
                    f"{source}: label {label} is both {by_label[label]!r} and {name!r} — the split file is "
                    f"inconsistent: {_source_fix(spec)}"
                )
    n = max(by_label) + 1 if by_label else 0
    missing = [i for i in range(n) if i not in by_label]
    if missing:
        raise UserError(
            f"{source}: labels {missing[:5]} of 0..{n - 1} have no images (a label out of range?) — the split "
            f"file is incomplete: {_source_fix(spec)}"
        )
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
