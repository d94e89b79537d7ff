"""The test-only ImageNet variants (ImageNet-V2, -Sketch, -A, -R) in their real CoOp layouts: fetch/link,
the normalised split, class names and labels as Dassl builds them, and their place in the protocols."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from promptbias import protocols
from promptbias.config import params_schema
from promptbias.data import fetch as fetch_module
from promptbias.data import registry, splits
from promptbias.data.download import DownloadFailed
from promptbias.data.fetch import fetch_dataset
from promptbias.data.layouts import load_layout
from promptbias.errors import UserError
from tests.loopback import LoopbackServer

_JPEG = io.BytesIO()
Image.new("RGB", (5, 4), (120, 30, 10)).save(_JPEG, format="JPEG")

# ImageNet's classnames.txt, cut to 6 classes (the real one has 1000 lines, sorted by wnid)
CLASSNAMES = [
    ("n01440764", "tench"),
    ("n01443537", "goldfish"),
    ("n01484850", "great white shark"),
    ("n01491361", "tiger shark"),
    ("n01494475", "hammerhead shark"),
    ("n01496331", "electric ray"),
]
CLASSNAMES_TXT = "".join(f"{w} {n}\n" for w, n in CLASSNAMES)
SUBSET = ["n01496331", "n01443537", "n01484850"]  # the 3 (of 6) classes of the -A / -R fixtures
_REAL_DOWNLOAD = fetch_module.download_file


def _img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_JPEG.getvalue())


def _write_v2(folder: Path, classnames: bool = True) -> None:
    """imagenetv2/imagenetv2-matched-frequency-format-val/<0..5>/<hash>.jpeg + classnames.txt."""
    for label in range(len(CLASSNAMES)):
        for i in (2, 1):
            _img(folder / "imagenetv2-matched-frequency-format-val" / str(label) / f"{label}abc{i}.jpeg")
    if classnames:
        (folder / "classnames.txt").write_text(CLASSNAMES_TXT)


def _write_sketch(folder: Path, classnames: bool = True) -> None:
    """imagenet-sketch/images/<wnid>/sketch_<i>.JPEG (all classes) + classnames.txt."""
    for wnid, _ in reversed(CLASSNAMES):
        for i in (1, 0):
            _img(folder / "images" / wnid / f"sketch_{i}.JPEG")
    if classnames:
        (folder / "classnames.txt").write_text(CLASSNAMES_TXT)


def _write_subset(image_dir: str, folder: Path, classnames: bool = True) -> None:
    """imagenet-adversarial/imagenet-a/ or imagenet-rendition/imagenet-r/: a subset of the wnids + README.txt."""
    for wnid in SUBSET:  # written out of order: labels follow the sorted folder names
        for i in (3, 1, 2):
            _img(folder / image_dir / wnid / f"{wnid[-3:]}_{i}.jpg")
    (folder / image_dir / "README.txt").write_text("ImageNet-A/R: 200 classes\n")
    (folder / image_dir / SUBSET[0] / ".DS_Store").write_bytes(b"")
    if classnames:
        (folder / "classnames.txt").write_text(CLASSNAMES_TXT)


WRITERS = {
    "imagenetv2": _write_v2,
    "imagenet_sketch": _write_sketch,
    "imagenet_a": lambda folder, classnames=True: _write_subset("imagenet-a", folder, classnames),
    "imagenet_r": lambda folder, classnames=True: _write_subset("imagenet-r", folder, classnames),
}
FOLDERS = {  # CoOp's DATASETS.md: $DATA/<folder>/<image dir>
    "imagenetv2": ("imagenetv2", "imagenetv2-matched-frequency-format-val"),
    "imagenet_sketch": ("imagenet-sketch", "images"),
    "imagenet_a": ("imagenet-adversarial", "imagenet-a"),
    "imagenet_r": ("imagenet-rendition", "imagenet-r"),
}


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(urls: object, dest: Path, *args: object, **kwargs: object) -> None:
        raise DownloadFailed(Path(dest).name, ["offline (test)"])

    monkeypatch.setattr(fetch_module, "download_file", offline)


def test_the_variants_are_registered_as_test_only_shifts_of_imagenet() -> None:
    assert registry.DOMAIN_SHIFTS == ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
    assert not set(registry.DOMAIN_SHIFTS) & set(registry.PAPER_DATASETS)
    for name in registry.DOMAIN_SHIFTS:
        spec = registry.get(name)
        assert spec.test_only and spec.shift_of == "imagenet" and registry.is_test_only(name)
        assert (spec.folder, spec.image_dir) == FOLDERS[name]
        assert spec.template == "a photo of a {}." and spec.sizes is not None and spec.sizes[:2] == (0, 0)
        assert spec.num_classes == (200 if name in ("imagenet_a", "imagenet_r") else 1000)
        images, names = spec.files
        assert (
            images.kind == "archive"
            and images.urls
            and images.manual
            and images.provides == (spec.image_dir,)
        )
        assert names.name == "classnames.txt" and names.same_as == "imagenet/classnames.txt"
    assert not registry.is_test_only("imagenet") and not registry.is_test_only("nope")
    schema = params_schema()["$defs"]
    assert tuple(schema["domain_target_name"]["enum"]) == registry.DOMAIN_SHIFTS
    assert set(registry.DOMAIN_SHIFTS) <= set(schema["dataset_name"]["enum"])  # refused in the sweep, by name
    for rf in (f for name in registry.DOMAIN_SHIFTS for f in registry.get(name).files):
        assert all(re.match(r"^https://[\w.-]+/\S+$", url) for url in rf.urls)
        assert rf.hash is None or re.match(r"^md5:[0-9a-f]{32}$", rf.hash)


@pytest.mark.parametrize("name", registry.DOMAIN_SHIFTS)
def test_from_links_the_coop_layout_into_a_test_only_split(name: str, tmp_path: Path) -> None:
    spec = registry.get(name)
    WRITERS[name](tmp_path / "DATA" / spec.folder)
    out = fetch_dataset(
        spec, tmp_path / "data", source=tmp_path / "DATA"
    )  # offline: links, downloads nothing
    split = json.loads(out.read_text())
    assert split["dataset"] == name and split["template"] == "a photo of a {}." and split["test_only"] is True
    assert split["train"] == [] and split["val"] == [] and "val_from_train" not in split
    folder = tmp_path / "data" / "raw" / name
    assert (folder / spec.image_dir).is_symlink() and (folder / "classnames.txt").is_symlink()
    for rel, label, raw in split["test"]:
        assert rel.startswith(f"{spec.image_dir}/") and (folder / rel).is_file()
        assert split["classnames"][label] == registry.clean_classname(raw)
    assert not any(rel.endswith(("README.txt", ".DS_Store")) for rel, _, _ in split["test"])


def test_imagenetv2_folder_i_is_line_i_of_classnames_txt(tmp_path: Path) -> None:
    _write_v2(tmp_path)
    shuffled = [CLASSNAMES[i] for i in (3, 0, 5, 1, 4, 2)]  # Dassl takes the file order, not sorted wnids
    (tmp_path / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in shuffled))
    split = load_layout(registry.get("imagenetv2"), tmp_path)
    assert split["classnames"] == [n for _, n in shuffled]
    assert split["test"][:3] == [
        ["imagenetv2-matched-frequency-format-val/0/0abc1.jpeg", 0, "tiger shark"],
        ["imagenetv2-matched-frequency-format-val/0/0abc2.jpeg", 0, "tiger shark"],
        ["imagenetv2-matched-frequency-format-val/1/1abc1.jpeg", 1, "tench"],
    ]
    assert len(split["test"]) == 12


def test_imagenet_sketch_labels_are_the_sorted_wnids(tmp_path: Path) -> None:
    _write_sketch(tmp_path)
    split = load_layout(registry.get("imagenet_sketch"), tmp_path)
    assert split["classnames"] == [n for _, n in CLASSNAMES]  # all classes, wnid order
    assert split["test"][0] == ["images/n01440764/sketch_0.JPEG", 0, "tench"]
    assert split["test"][-1] == ["images/n01496331/sketch_1.JPEG", 5, "electric ray"]


@pytest.mark.parametrize(("name", "image_dir"), [("imagenet_a", "imagenet-a"), ("imagenet_r", "imagenet-r")])
def test_a_and_r_keep_the_subset_of_classes_present_in_dassls_label_order(
    name: str, image_dir: str, tmp_path: Path
) -> None:
    _write_subset(image_dir, tmp_path)
    split = load_layout(registry.get(name), tmp_path)
    # Dassl: enumerate(sorted folders, README.txt dropped) → 0..k-1; names of those wnids from classnames.txt
    assert split["classnames"] == ["goldfish", "great white shark", "electric ray"]
    assert [(rel.split("/")[1], label) for rel, label, _ in split["test"][::3]] == [
        ("n01443537", 0),
        ("n01484850", 1),
        ("n01496331", 2),
    ]
    assert [rel for rel, _, _ in split["test"][:3]] == [
        f"{image_dir}/n01443537/537_{i}.jpg" for i in (1, 2, 3)
    ]


def test_classnames_txt_is_copied_from_the_fetched_imagenet(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "raw" / "imagenet").mkdir(parents=True)
    (root / "raw" / "imagenet" / "classnames.txt").write_text(CLASSNAMES_TXT)
    _write_subset("imagenet-a", tmp_path / "DATA" / "imagenet-adversarial", classnames=False)
    out = fetch_dataset(registry.get("imagenet_a"), root, source=tmp_path / "DATA")
    copied = root / "raw" / "imagenet_a" / "classnames.txt"
    assert copied.read_text() == CLASSNAMES_TXT and not copied.is_symlink()
    assert json.loads(out.read_text())["classnames"] == ["goldfish", "great white shark", "electric ray"]
    assert "imagenet_a/classnames.txt" in json.loads((root / "checksums.lock.json").read_text())


@pytest.mark.parametrize("name", registry.DOMAIN_SHIFTS)
def test_an_unavailable_download_says_where_to_get_it_and_how_to_link_it(name: str, tmp_path: Path) -> None:
    spec = registry.get(name)
    with pytest.raises(UserError) as err:
        fetch_dataset(spec, tmp_path / "data")
    msg = str(err.value)
    images = spec.files[0]
    assert msg.startswith(f"{name}: {images.name} is not available (offline (test))") and "\n" not in msg
    assert images.manual in msg and str(tmp_path / "data" / "raw" / name / spec.image_dir) in msg
    assert f"`promptbias fetch {name} --from DATA`, DATA holding {spec.folder}/" in msg
    assert not (tmp_path / "data" / "raw" / f"{name}.json").exists()


def test_imagenetv2_without_a_class_folder_is_refused_in_one_line(tmp_path: Path) -> None:
    _write_v2(tmp_path)
    for f in (tmp_path / "imagenetv2-matched-frequency-format-val" / "4").iterdir():
        f.unlink()
    (tmp_path / "imagenetv2-matched-frequency-format-val" / "4").rmdir()
    with pytest.raises(UserError, match=r"format-val/4: class folder missing \(1 of 6\) — extract") as err:
        load_layout(registry.get("imagenetv2"), tmp_path)
    assert "\n" not in str(err.value)


def test_an_empty_class_folder_of_a_variant_is_named(tmp_path: Path) -> None:
    _write_subset("imagenet-r", tmp_path)
    (tmp_path / "imagenet-r" / "n01491361").mkdir()
    with pytest.raises(UserError, match=r"imagenet-r/n01491361: class folder without images — complete it"):
        load_layout(registry.get("imagenet_r"), tmp_path)


def test_sketch_zip_is_extracted_as_images(
    server: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:  # ImageNet-Sketch.zip holds sketch/<wnid>/
        for wnid, _ in CLASSNAMES[:2]:
            z.writestr(f"sketch/{wnid}/sketch_0.JPEG", _JPEG.getvalue())
    spec = registry.get("imagenet_sketch")
    images, names = spec.files
    spec = dataclasses.replace(
        spec,
        files=(
            dataclasses.replace(images, urls=(server.add("/ImageNet-Sketch.zip", buf.getvalue()),)),
            dataclasses.replace(names, urls=(server.add("/classnames.txt", CLASSNAMES_TXT.encode()),)),
        ),
    )
    monkeypatch.setattr(fetch_module, "download_file", _REAL_DOWNLOAD)  # from the loopback server
    split = json.loads(fetch_dataset(spec, tmp_path, backoff=0).read_text())
    assert split["test"] == [
        ["images/n01440764/sketch_0.JPEG", 0, "tench"],
        ["images/n01443537/sketch_0.JPEG", 1, "goldfish"],
    ]
    assert not (tmp_path / "raw" / "imagenet_sketch" / "sketch").exists()


# ------------------------------------------------------------------------ never split, never trained


def _fetched(tmp_path: Path, name: str = "imagenet_a") -> Path:
    spec = registry.get(name)
    WRITERS[name](tmp_path / "DATA" / spec.folder)
    fetch_dataset(spec, tmp_path / "data", source=tmp_path / "DATA")
    return tmp_path / "data"


def test_a_variant_has_no_few_shot_split_but_its_view_evaluates_on_nothing_else(tmp_path: Path) -> None:
    root = _fetched(tmp_path)
    with pytest.raises(UserError) as err:
        splits.load_fewshot(root, "imagenet_a", 16, 1)
    assert str(err.value).startswith(
        "imagenet_a: test-only (ImageNet-A has no train images), so it has no few"
    )
    assert "`imagenet_a-from_imagenet`" in str(err.value) and "cross_dataset.domain_targets" in str(err.value)
    view = protocols.transfer_id("imagenet_a", "imagenet")
    few = splits.load_fewshot(root, view, 16, 1)  # no file: nothing to sample
    assert few["train"] == [] and few["val"] == [] and not (root / "splits").exists()
    assert protocols.train_source(view) == "imagenet" and protocols.data_of(view) == "imagenet_a"


def test_cli_split_of_a_variant_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from promptbias.cli import main

    root = _fetched(tmp_path, "imagenet_r")
    repo = Path(__file__).resolve().parents[1]
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "--params",
                str(repo / "params.yaml"),
                "--set",
                f"data.root={root}",
                "split",
                "imagenet_r",
                "--seed",
                "1",
            ]
        )
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: imagenet_r: test-only (ImageNet-R has no train images)")
    assert not (root / "splits").exists()
