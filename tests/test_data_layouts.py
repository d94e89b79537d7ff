"""Fixture folders in each paper dataset's real CoOp on-disk layout load into the normalised split."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from promptbias.data import fetch as fetch_module
from promptbias.data import registry
from promptbias.data.fetch import fetch_dataset
from promptbias.data.layouts import load_layout
from promptbias.errors import UserError

_JPEG = io.BytesIO()
Image.new("RGB", (5, 4), (10, 120, 30)).save(_JPEG, format="JPEG")


def _img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_JPEG.getvalue())


# (raw class name in the split file, path relative to image_dir) per class; 3 train / 2 val / 1 test each
JSON_FIXTURES: dict[str, list[tuple[str, list[str]]]] = {
    "caltech101": [
        ("face", [f"Faces/image_{i:04d}.jpg" for i in range(1, 7)]),
        ("leopard", [f"Leopards/image_{i:04d}.jpg" for i in range(1, 7)]),
    ],
    "oxford_pets": [
        ("abyssinian", [f"Abyssinian_{i}.jpg" for i in range(1, 7)]),
        ("american_bulldog", [f"american_bulldog_{i}.jpg" for i in range(1, 7)]),
    ],
    "stanford_cars": [
        ("2012 Audi TTS Coupe", [f"cars_train/{i:05d}.jpg" for i in range(1, 6)] + ["cars_test/00001.jpg"]),
        (
            "2007 Hyundai Elantra Sedan",
            [f"cars_train/{i:05d}.jpg" for i in range(6, 11)] + ["cars_test/00002.jpg"],
        ),
    ],
    "oxford_flowers": [
        ("pink primrose", [f"image_{i:05d}.jpg" for i in range(1, 7)]),
        ("globe thistle", [f"image_{i:05d}.jpg" for i in range(7, 13)]),
    ],
    "food101": [
        ("apple_pie", [f"apple_pie/{1000 + i}.jpg" for i in range(6)]),
        ("baby_back_ribs", [f"baby_back_ribs/{2000 + i}.jpg" for i in range(6)]),
    ],
    "sun397": [
        ("abbey", [f"a/abbey/sun_a{i}.jpg" for i in range(6)]),
        ("outdoor apartment_building", [f"a/apartment_building/outdoor/sun_b{i}.jpg" for i in range(6)]),
    ],
    "dtd": [
        ("banded", [f"banded/banded_{i:04d}.jpg" for i in range(6)]),
        ("zigzagged", [f"zigzagged/zigzagged_{i:04d}.jpg" for i in range(6)]),
    ],
    "eurosat": [
        ("Annual Crop Land", [f"AnnualCrop/AnnualCrop_{i}.jpg" for i in range(1, 7)]),
        ("Sea or Lake", [f"SeaLake/SeaLake_{i}.jpg" for i in range(1, 7)]),
    ],
    "ucf101": [
        ("Apply_Eye_Makeup", [f"Apply_Eye_Makeup/v_ApplyEyeMakeup_g08_c0{i}.jpg" for i in range(1, 7)]),
        ("Yo_Yo", [f"YoYo/v_YoYo_g01_c0{i}.jpg" for i in range(1, 7)]),
    ],
}
EXPECTED_CLASSNAMES = {
    "caltech101": ["face", "leopard"],
    "oxford_pets": ["abyssinian", "american bulldog"],
    "stanford_cars": ["2012 Audi TTS Coupe", "2007 Hyundai Elantra Sedan"],
    "oxford_flowers": ["pink primrose", "globe thistle"],
    "food101": ["apple pie", "baby back ribs"],
    "sun397": ["abbey", "outdoor apartment building"],
    "dtd": ["banded", "zigzagged"],
    "eurosat": ["Annual Crop Land", "Sea or Lake"],
    "ucf101": ["Apply Eye Makeup", "Yo Yo"],
    "fgvc_aircraft": ["707-320", "Boeing 717", "F-16A/B"],
    "imagenet": ["tench", "great white shark"],
}


def _placeholders(spec: registry.DatasetSpec, folder: Path) -> None:
    """Everything the registry expects that the fixture did not write (annotations, .mat files, …)."""
    for rf in spec.files:
        for rel in rf.present_paths:
            path = folder / rel
            if path.exists():
                continue
            if Path(rel).suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"placeholder")
            else:
                path.mkdir(parents=True)


def _write_json_dataset(name: str, folder: Path) -> tuple[int, int, int]:
    spec = registry.get(name)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, (classname, paths) in enumerate(JSON_FIXTURES[name]):
        for i, rel in enumerate(paths):
            _img(folder / spec.image_dir / rel)
            split["train" if i < 3 else "val" if i < 5 else "test"].append([rel, label, classname])
    assert spec.split_file is not None
    (folder / spec.split_file).write_text(json.dumps(split))
    return 3 * len(JSON_FIXTURES[name]), 2 * len(JSON_FIXTURES[name]), len(JSON_FIXTURES[name])


def _write_fgvc(folder: Path) -> tuple[int, int, int]:
    variants = ["707-320", "Boeing 717", "F-16A/B"]
    (folder).mkdir(parents=True, exist_ok=True)
    (folder / "variants.txt").write_text("\n".join(variants) + "\n")
    counts = {"train": 2, "val": 1, "test": 1}
    image_id = 1000000
    for split, n in counts.items():
        lines = []
        for variant in reversed(variants):  # file order differs from variants.txt order
            for _ in range(n):
                image_id += 1
                _img(folder / "images" / f"{image_id}.jpg")
                lines.append(f"{image_id} {variant}")
        (folder / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return 6, 3, 3


def _write_imagenet(folder: Path) -> tuple[int, int, int]:
    (folder).mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("n01440764 tench\nn01491361 great white shark\n")
    for wnid in ("n01491361", "n01440764"):
        for i in (3, 1, 2):
            _img(folder / "images" / "train" / wnid / f"{wnid}_{i}.JPEG")
        _img(folder / "images" / "val" / wnid / f"ILSVRC2012_val_{wnid}.JPEG")
    (folder / "images" / "train" / "n01440764" / ".DS_Store").write_bytes(b"")
    return 6, 2, 2


def _write(name: str, folder: Path) -> tuple[int, int, int]:
    if name == "fgvc_aircraft":
        counts = _write_fgvc(folder)
    elif name == "imagenet":
        counts = _write_imagenet(folder)
    else:
        counts = _write_json_dataset(name, folder)
    _placeholders(registry.get(name), folder)
    return counts


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("fixture datasets must not download anything")

    monkeypatch.setattr(fetch_module, "download_file", refuse)


@pytest.mark.parametrize("name", registry.PAPER_DATASETS)
def test_fixture_layout_loads_with_right_classnames_and_counts(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = fetch_module.hash_matches
    monkeypatch.setattr(
        fetch_module, "hash_matches", lambda p, h: p.read_bytes() == b"placeholder" or real(p, h)
    )  # placeholder .mat files stand in for the real, hashed ones
    spec = registry.get(name)
    coop = tmp_path / "DATA" / spec.folder
    n_train, n_val, n_test = _write(name, coop)
    split = fetch_dataset(spec, tmp_path / "data", source=tmp_path / "DATA")
    loaded = json.loads(split.read_text())
    assert loaded["dataset"] == name and loaded["template"] == spec.template
    assert loaded["classnames"] == EXPECTED_CLASSNAMES[name]
    assert (len(loaded["train"]), len(loaded["val"]), len(loaded["test"])) == (n_train, n_val, n_test)
    folder = tmp_path / "data" / "raw" / name
    for rel, label, _ in loaded["train"] + loaded["val"] + loaded["test"]:
        assert not rel.startswith("/") and (folder / rel).is_file()
        assert 0 <= label < len(loaded["classnames"])


def test_local_copy_with_a_wrong_registry_hash_is_refused(tmp_path: Path) -> None:
    _write("oxford_flowers", tmp_path / "DATA" / "oxford_flowers")  # imagelabels.mat is a placeholder
    with pytest.raises(UserError, match=r"imagelabels\.mat: checksum does not match"):
        fetch_dataset(registry.get("oxford_flowers"), tmp_path / "data", source=tmp_path / "DATA")
    assert not (tmp_path / "data" / "raw" / "oxford_flowers.json").exists()


def test_fgvc_labels_follow_variants_txt_order(tmp_path: Path) -> None:
    _write_fgvc(tmp_path)
    split = load_layout(registry.get("fgvc_aircraft"), tmp_path)
    assert split["train"][0][1:] == [2, "F-16A/B"] and split["train"][0][0].startswith("images/")
    assert sorted({lab for _, lab, _ in split["test"]}) == [0, 1, 2]


def test_imagenet_uses_sorted_folders_and_files_and_val_as_test(tmp_path: Path) -> None:
    _write_imagenet(tmp_path)
    split = load_layout(registry.get("imagenet"), tmp_path)
    assert [r for r, _, _ in split["train"][:3]] == [
        f"images/train/n01440764/n01440764_{i}.JPEG" for i in (1, 2, 3)
    ]
    assert split["val"] == split["test"] and split["test"][1][1:] == [1, "great white shark"]


def test_paths_are_joined_with_image_dir(tmp_path: Path) -> None:
    _write_json_dataset("eurosat", tmp_path)
    split = load_layout(registry.get("eurosat"), tmp_path)
    assert split["train"][0] == ["2750/AnnualCrop/AnnualCrop_1.jpg", 0, "Annual Crop Land"]


def test_missing_split_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"split_zhou_DescribableTextures\.json"):
        load_layout(registry.get("dtd"), tmp_path)


def test_inconsistent_labels_are_refused(tmp_path: Path) -> None:
    bad = {"train": [["a/1.jpg", 0, "cat"], ["b/1.jpg", 0, "dog"]], "val": [], "test": []}
    (tmp_path / "split_zhou_DescribableTextures.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match="label 0 is both"):
        load_layout(registry.get("dtd"), tmp_path)
