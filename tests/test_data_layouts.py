"""Fixture folders in each paper dataset's real CoOp on-disk layout load into the normalised split."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
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
    return 6, 0, 2  # val is drawn from train at split time


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


def test_imagenet_uses_sorted_folders_and_files_and_official_val_as_test_only(tmp_path: Path) -> None:
    _write_imagenet(tmp_path)
    split = load_layout(registry.get("imagenet"), tmp_path)
    assert [r for r, _, _ in split["train"][:3]] == [
        f"images/train/n01440764/n01440764_{i}.JPEG" for i in (1, 2, 3)
    ]
    assert split["test"][1] == ["images/val/n01491361/ILSVRC2012_val_n01491361.JPEG", 1, "great white shark"]
    assert split["val"] == [] and split["val_from_train"] is True  # val: drawn from train by make_fewshot


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


# ------------------------------------------------------------------ empty splits and ImageNet's flat val


def _flat_imagenet_val(folder: Path) -> None:
    """ImageNet with val as ILSVRC2012_img_val.tar unpacks: 50k files directly in images/val/."""
    _write_imagenet(folder)
    val = folder / "images" / "val"
    for i, f in enumerate(sorted(val.glob("*/*.JPEG")), start=1):
        f.rename(val / f"ILSVRC2012_val_{i:08d}.JPEG")
    for wnid_dir in val.iterdir():
        if wnid_dir.is_dir():
            wnid_dir.rmdir()


def test_flat_imagenet_val_is_refused_at_fetch_with_how_to_sort_it(tmp_path: Path) -> None:
    _flat_imagenet_val(tmp_path / "DATA" / "imagenet")
    with pytest.raises(UserError) as err:
        fetch_dataset(registry.get("imagenet"), tmp_path / "data", source=tmp_path / "DATA")
    msg = str(err.value)
    val = tmp_path / "data" / "raw" / "imagenet" / "images" / "val"
    assert (
        msg.startswith(f"{val}: 2 image(s) lie directly in it, not in <wnid>/ class folders")
        and "\n" not in msg
    )
    assert f"move each into {val}/<wnid>/" in msg and "valprep.sh" in msg
    assert not (tmp_path / "data" / "raw" / "imagenet.json").exists()


def _empty_dtd_test(folder: Path) -> str:
    _write("dtd", folder)
    split_file = folder / "split_zhou_DescribableTextures.json"
    split = json.loads(split_file.read_text())
    split["test"] = []
    split_file.write_text(json.dumps(split))
    return (
        "split_zhou_DescribableTextures.json: the test split of dtd is empty — replace the file with CoOp's"
    )


def _empty_imagenet_train(folder: Path) -> str:
    _write("imagenet", folder)
    for f in (folder / "images" / "train").rglob("*.JPEG"):  # e.g. the per-class tars never unpacked
        f.unlink()
    return "images/train: the train split of imagenet is empty — put its images in images/train/<wnid>/"


def _empty_fgvc_test(folder: Path) -> str:
    _write("fgvc_aircraft", folder)
    (folder / "images_variant_test.txt").write_text("")
    return "images_variant_test.txt: the test split of fgvc_aircraft is empty — restore the file"


@pytest.mark.parametrize(
    ("name", "make"),
    [("dtd", _empty_dtd_test), ("imagenet", _empty_imagenet_train), ("fgvc_aircraft", _empty_fgvc_test)],
)
def test_an_empty_train_or_test_split_is_refused_at_fetch(
    tmp_path: Path, name: str, make: Callable[[Path], str]
) -> None:
    spec = registry.get(name)
    expected = make(tmp_path / "DATA" / spec.folder)
    with pytest.raises(UserError) as err:
        fetch_dataset(spec, tmp_path / "data", source=tmp_path / "DATA")
    assert expected in str(err.value) and f"rerun `promptbias fetch {name}`" in str(err.value)
    assert "\n" not in str(err.value) and not (tmp_path / "data" / "raw" / f"{name}.json").exists()


# ------------------------------------------------------- a trimmed CoOp copy: split json + images only

SPLIT_SOURCES = {  # what CoOp reads only when split_zhou_*.json is missing
    "oxford_pets": {"annotations"},
    "stanford_cars": {"devkit", "cars_test_annos_withlabels.mat"},
    "oxford_flowers": {"imagelabels.mat", "cat_to_name.json"},
}


@pytest.mark.parametrize("name", sorted(SPLIT_SOURCES))
def test_trimmed_copy_links_without_download_or_split_building_files(name: str, tmp_path: Path) -> None:
    spec = registry.get(name)
    coop = tmp_path / "DATA" / spec.folder
    n_train, n_val, n_test = _write_json_dataset(name, coop)  # the split json and the images, nothing else
    assert {p for rf in spec.files if rf.split_source for p in rf.present_paths} == SPLIT_SOURCES[name]
    out = fetch_dataset(spec, tmp_path / "data", source=tmp_path / "DATA")  # download_file refuses
    loaded = json.loads(out.read_text())
    assert (len(loaded["train"]), len(loaded["val"]), len(loaded["test"])) == (n_train, n_val, n_test)
    folder = tmp_path / "data" / "raw" / name
    assert {e.name for e in folder.iterdir()} == {e.name for e in coop.iterdir()}  # linked what is there
    assert not any((folder / p).exists() for p in SPLIT_SOURCES[name])
