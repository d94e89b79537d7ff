"""Integrity at the split boundary (issue 27, items 1 and 4): no split entry can make a run count a wrong
label, or read a file outside the dataset folder.

Every case edits what a broken mirror or a careless collaborator could hand over — the normalised split
``data/raw/demo_shapes.json``, the few-shot file, the images folder, or a CoOp source split given to
``fetch --from`` — runs the real console entry (``promptbias.cli.main``, in-process) in a fresh copy of the
demo workspace and checks: exit code 2, exactly one stderr line ``error: …`` naming the file (and the
entry, ``test[0]``) with a fix, and the workspace byte-for-byte unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.helpers import describe_diff, one_error_line, snapshot
from tests.workspace import Workspace

P = ["--params", "params.yaml"]
EVAL = [*P, "evaluate", "--dataset", "demo_shapes", "--method", "zeroshot", "--seed", "1"]
TRAIN = [*P, "train", "--dataset", "demo_shapes", "--method", "bias", "--seed", "1"]
SPLIT = [*P, "split", "demo_shapes", "--shots", "4", "--seed", "1"]
RAW = "data/raw/demo_shapes.json"
FEW = "data/splits/demo_shapes/shot4_seed1.json"
EUROSAT = "split_zhou_EuroSAT.json"
CLASSES = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial")


@dataclass(frozen=True)
class Case:
    """A bad input: ``prepare(workspace, outside)`` edits things and returns the argv; ``names`` must appear."""

    id: str
    prepare: Callable[[Path, Path], list[str]]
    names: tuple[str, ...]


def _edit(ws: Path, rel: str, change: Callable[[dict[str, Any]], None]) -> None:
    path = ws / rel
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _raw(change: Callable[[dict[str, Any]], None], argv: list[str]) -> Callable[[Path, Path], list[str]]:
    """Edit data/raw/demo_shapes.json, then run ``argv``."""

    def prepare(ws: Path, outside: Path) -> list[str]:
        _edit(ws, RAW, change)
        return argv

    return prepare


def _set(split: str, index: int, field: int, value: object) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data[split][index][field] = value

    return change


def _outside_png(outside: Path) -> Path:
    """A valid PNG outside the workspace (what a hostile split would point at)."""
    from PIL import Image

    path = outside / "elsewhere.png"
    Image.new("RGB", (16, 16), (255, 0, 0)).save(path)
    return path


def _first_train(ws: Path) -> list[Any]:
    return json.loads((ws / FEW).read_text())["train"][0]


def _absolute_then_train(ws: Path, outside: Path) -> list[str]:
    """The raw split and the few-shot file (as `split` wrote it on 0faf963) both name an absolute PNG."""
    rel = _first_train(ws)[0]
    png = str(_outside_png(outside))
    for name in (RAW, FEW):
        _edit(ws, name, lambda d: [e.__setitem__(0, png) for e in d["train"] if e[0] == rel])
    return TRAIN


def _absolute_then_split(ws: Path, outside: Path) -> list[str]:
    png = str(_outside_png(outside))
    _edit(ws, RAW, _set("train", 0, 0, png))
    return SPLIT


def _link_image_outside(ws: Path, outside: Path) -> list[str]:
    """A train image of the few-shot set replaced by a symlink to a PNG outside the dataset."""
    image = ws / "data/raw/demo_shapes" / _first_train(ws)[0]
    image.unlink()
    image.symlink_to(_outside_png(outside))
    return TRAIN


def _link_class_folder_outside(ws: Path, outside: Path) -> list[str]:
    """A class folder moved outside the workspace and symlinked back (its images intact)."""
    folder = (ws / "data/raw/demo_shapes" / _first_train(ws)[0]).parent
    moved = outside / folder.name
    shutil.move(str(folder), moved)
    folder.symlink_to(moved, target_is_directory=True)
    return TRAIN


def _leak_test_into_train(data: dict[str, Any]) -> None:
    data["train"].insert(0, list(data["test"][0]))


def _duplicate_test_entry(data: dict[str, Any]) -> None:
    data["test"].insert(1, list(data["test"][0]))


def _classname_of_other_label(data: dict[str, Any]) -> None:
    data["test"][0][2] = data["classnames"][1]


def _extra_classname(data: dict[str, Any]) -> None:
    data["classnames"].append("purple hexagon")


def _two_fields(data: dict[str, Any]) -> None:
    data["test"][0] = data["test"][0][:2]


def _backslashes(data: dict[str, Any]) -> None:
    data["test"][0][0] = data["test"][0][0].replace("/", "\\")


def _dot_slash(data: dict[str, Any]) -> None:
    data["test"][0][0] = "./" + data["test"][0][0]


# ------------------------------------------------------------------ a CoOp source split given to fetch --from


def _coop_eurosat(outside: Path, edit: Callable[[dict[str, list]], None] | None = None) -> Path:
    """A trimmed CoOp copy of EuroSAT (5 classes, PNG bytes) in ``outside/DATA``; ``edit`` its split."""
    from PIL import Image

    data = outside / "DATA"
    items: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, folder in enumerate(CLASSES):
        (data / "eurosat" / "2750" / folder).mkdir(parents=True, exist_ok=True)
        for i, split in enumerate(("train", "train", "val", "test")):
            rel = f"{folder}/{folder}_{i + 1}.jpg"
            Image.new("RGB", (8, 8), (label * 40, 0, 0)).save(data / "eurosat" / "2750" / rel, format="PNG")
            items[split].append([rel, label, folder])
    if edit is not None:
        edit(items)
    (data / "eurosat" / EUROSAT).write_text(json.dumps(items))
    return data


def _fetch(edit: Callable[[dict[str, list]], None]) -> Callable[[Path, Path], list[str]]:
    def prepare(ws: Path, outside: Path) -> list[str]:
        return [*P, "fetch", "eurosat", "--from", str(_coop_eurosat(outside, edit))]

    return prepare


def _source_set(split: str, index: int, field: int, value: object) -> Callable[[dict[str, list]], None]:
    def edit(items: dict[str, list]) -> None:
        items[split][index][field] = value

    return edit


def _source_traversal(items: dict[str, list]) -> None:
    items["train"][0][0] = "../../../../etc/hostname"
    items["test"][0][0] = "../../etc/passwd"


def _source_two_fields(items: dict[str, list]) -> None:
    items["val"][1] = items["val"][1][:2]


def _source_one_name_two_labels(items: dict[str, list]) -> None:
    for split in items.values():
        for entry in split:
            if entry[1] == 1:
                entry[2] = CLASSES[0]


def _fetch_with_link_outside(ws: Path, outside: Path) -> list[str]:
    """The copy's first train image is a symlink to a PNG outside the copy."""
    data = _coop_eurosat(outside)
    image = data / "eurosat" / "2750" / CLASSES[0] / f"{CLASSES[0]}_1.jpg"
    image.unlink()
    image.symlink_to(_outside_png(outside))
    return [*P, "fetch", "eurosat", "--from", str(data)]


def _fgvc_traversal(ws: Path, outside: Path) -> list[str]:
    """An FGVC-Aircraft copy whose variant file names an image id that climbs out of images/."""
    from PIL import Image

    data = outside / "DATA" / "fgvc_aircraft"
    (data / "images").mkdir(parents=True)
    variants = ["707-320", "F-16A/B"]
    (data / "variants.txt").write_text("".join(f"{v}\n" for v in variants))
    for split, start in (("train", 100), ("val", 200), ("test", 300)):
        ids = [f"{start + k:07d}" for k in range(len(variants))]
        for image_id in ids:
            Image.new("RGB", (8, 8)).save(data / "images" / f"{image_id}.jpg", format="PNG")
        lines = [f"{i} {v}" for i, v in zip(ids, variants, strict=True)]
        if split == "train":
            lines.insert(0, "../../../../etc/hostname 707-320")
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return [*P, "fetch", "fgvc_aircraft", "--from", str(data.parent)]


CASES = [
    # the cases of the issue
    Case("raw-test-label-99", _raw(_set("test", 0, 1, 99), EVAL), ("demo_shapes.json", "test[0]", "99")),
    Case("raw-test-label-minus-1", _raw(_set("test", 0, 1, -1), EVAL), ("demo_shapes.json", "test[0]", "-1")),
    Case("fetch-source-train-label-42", _fetch(_source_set("train", 0, 1, 42)), (EUROSAT, "train[0]", "42")),
    Case("raw-absolute-path-then-split", _absolute_then_split, ("demo_shapes.json", "train[0]", "absolute")),
    Case("raw-and-fewshot-absolute-path-train", _absolute_then_train, ("demo_shapes.json", "absolute")),
    Case("fetch-source-dotdot-paths", _fetch(_source_traversal), (EUROSAT, "train[0]", "../../../../etc")),
    # further bad inputs at the same boundary
    Case("raw-label-float", _raw(_set("train", 0, 1, 0.0), SPLIT), ("demo_shapes.json", "train[0]", "float")),
    Case("raw-label-string", _raw(_set("test", 0, 1, "3"), EVAL), ("demo_shapes.json", "test[0]", "str")),
    Case("raw-label-bool", _raw(_set("test", 0, 1, True), EVAL), ("demo_shapes.json", "test[0]", "bool")),
    Case("raw-name-of-another-label", _raw(_classname_of_other_label, EVAL), ("demo_shapes.json", "test[0]")),
    Case("raw-classname-without-images", _raw(_extra_classname, EVAL), ("demo_shapes.json", "label 10")),
    Case("raw-entry-with-two-fields", _raw(_two_fields, EVAL), ("demo_shapes.json", "test[0]")),
    Case("raw-backslash-path", _raw(_backslashes, EVAL), ("demo_shapes.json", "test[0]", "backslash")),
    Case("raw-empty-path", _raw(_set("test", 0, 0, ""), EVAL), ("demo_shapes.json", "test[0]", "empty")),
    Case("raw-dot-slash-path", _raw(_dot_slash, EVAL), ("demo_shapes.json", "test[0]", "normalised")),
    Case("raw-test-image-also-in-train", _raw(_leak_test_into_train, SPLIT), ("demo_shapes.json", "test[0]")),
    Case("raw-test-entry-twice", _raw(_duplicate_test_entry, EVAL), ("demo_shapes.json", "test[1]")),
    Case("image-symlink-leaves-dataset", _link_image_outside, ("red_circle", "elsewhere.png", "outside")),
    Case("class-folder-symlink-leaves-dataset", _link_class_folder_outside, ("red_circle", "outside")),
    Case("fetch-source-label-string", _fetch(_source_set("test", 2, 1, "2")), (EUROSAT, "test[2]", "str")),
    Case("fetch-source-entry-two-fields", _fetch(_source_two_fields), (EUROSAT, "val[1]")),
    Case("fetch-fgvc-image-id-dotdot", _fgvc_traversal, ("images_variant_train.txt", "line 1", "..")),
    Case(
        "fetch-source-image-symlink-outside", _fetch_with_link_outside, ("AnnualCrop_1.jpg", "elsewhere.png")
    ),
]


def _run(argv: list[str], ws: Path, capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from promptbias.cli import main

    capfd.readouterr()
    old = os.getcwd()
    os.chdir(ws)
    try:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
    finally:
        os.chdir(old)
    return int(exit_.value.code or 0), capfd.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_split_data_is_one_line_exit_2_and_writes_nothing(
    case: Case, base_ws: Workspace, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ws = base_ws.copy(tmp_path / "ws")
    outside = tmp_path / "outside"
    outside.mkdir()
    argv = case.prepare(ws.path, outside)
    before = snapshot(ws.path)
    code, err = _run(argv, ws.path, capfd)
    assert code == 2, err
    one_error_line(err, case.names)
    after = snapshot(ws.path)
    assert after == before, f"the failed command wrote to the workspace: {describe_diff(before, after)}"


def test_valid_links_at_the_top_of_the_dataset_are_accepted(
    base_ws: Workspace, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """``fetch --from`` links the copy's top-level entries: images reached through them are inside the
    dataset, and the fetched split trains on them (the confinement refuses only links further down)."""
    ws = base_ws.copy(tmp_path / "ws")
    data = _coop_eurosat(tmp_path / "outside")
    ws.cli("fetch", "eurosat", "--from", str(data))
    assert (ws.path / "data/raw/eurosat/2750").is_symlink()
    ws.cli("split", "eurosat", "--shots", "4", "--seed", "1")
    out = ws.cli(
        "--set", "train.epochs=1", "train", "--dataset", "eurosat", "--method", "bias", "--seed", "1"
    )
    assert (ws.path / "runs/eurosat/bias/seed1/params.safetensors").is_file(), out


def test_two_labels_may_share_a_class_name(base_ws: Workspace, tmp_path: Path) -> None:
    """CLIP's and CoOp's ImageNet class names name two classes 'missile' and two 'sunglasses': a split whose
    labels 0 and 1 share a name is fetched, and its normalised split reads back (one name per label is the
    rule, not one label per name)."""
    ws = base_ws.copy(tmp_path / "ws")
    ws.cli(
        "fetch", "eurosat", "--from", str(_coop_eurosat(tmp_path / "outside", _source_one_name_two_labels))
    )
    split = json.loads((ws.path / "data/raw/eurosat.json").read_text())
    assert split["classnames"][0] == split["classnames"][1]
    ws.cli("split", "eurosat", "--shots", "4", "--seed", "1")
    assert (ws.path / "data/splits/eurosat/shot4_seed1.json").is_file()
