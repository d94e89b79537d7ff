"""Few-shot subsets: CoOp/Dassl-compatible, deterministic, K per class (or all), relative paths."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import pytest

from promptbias import paths
from promptbias.data.splits import load_fewshot, load_split, make_fewshot
from promptbias.errors import UserError
from promptbias.runs import dataset_info


def _split() -> dict:
    """Labels interleaved and partly shuffled; class 3 is smaller than most K."""
    rng = random.Random(0)
    train, val = [], []
    for i in range(60):
        label = (2, 0, 1)[i % 3]
        train.append([f"c{label}/img_{i:03d}.jpg", label, f"class_{label}"])
    train += [[f"c3/img_{i}.jpg", 3, "class_3"] for i in range(3)]
    head = train[:30]
    rng.shuffle(head)
    train[:30] = head
    for i in range(24):
        label = (1, 3, 0, 2)[i % 4]
        val.append([f"c{label}/val_{i:03d}.jpg", label, f"class_{label}"])
    names = [f"class {y}" for y in range(4)]
    return {"dataset": "toy", "classnames": names, "template": "{}", "train": train, "val": val, "test": []}


def _dassl_reference(split: dict, shots: int, seed: int) -> tuple[list, list]:
    """Dassl's generate_fewshot_dataset as CoOp calls it, written out independently."""

    def generate(data_source: list, num_shots: int) -> list:
        if num_shots < 1:
            return data_source
        tracker: dict[int, list] = defaultdict(list)
        for item in data_source:
            tracker[item[1]].append(item)
        dataset: list = []
        for items in tracker.values():
            dataset.extend(random.sample(items, num_shots) if len(items) >= num_shots else items)
        return dataset

    state = random.getstate()
    try:
        random.seed(seed)
        train = generate(split["train"], shots)
        val = generate(split["val"], min(shots, 4))
    finally:
        random.setstate(state)
    return train, val


@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_equals_dassl_generate_fewshot_dataset(shots: int, seed: int) -> None:
    split = _split()
    few = make_fewshot(split, shots, seed)
    train, val = _dassl_reference(split, shots, seed)
    assert few["train"] == train and few["val"] == val
    assert (few["dataset"], few["shots"], few["seed"]) == ("toy", shots, seed)


def test_k_per_class_or_all_and_val_capped_at_four() -> None:
    split = _split()
    few = make_fewshot(split, 8, 1)
    per_train: dict[int, int] = defaultdict(int)
    for _, label, _ in few["train"]:
        per_train[label] += 1
    assert per_train == {0: 8, 1: 8, 2: 8, 3: 3}  # class 3 has only 3 images: all kept
    first_seen = list(dict.fromkeys(lab for _, lab, _ in split["train"]))
    assert first_seen != sorted(first_seen)
    assert list(dict.fromkeys(lab for _, lab, _ in few["train"])) == first_seen  # grouped in that order
    per_val: dict[int, int] = defaultdict(int)
    for _, label, _ in few["val"]:
        per_val[label] += 1
    assert set(per_val.values()) == {4}
    assert len({p for p, _, _ in few["train"]}) == len(few["train"])  # without replacement


def test_deterministic_and_seed_dependent() -> None:
    split = _split()
    random.seed(12345)  # the global generator's state must not matter
    a = make_fewshot(split, 4, 1)
    random.seed(999)
    assert make_fewshot(split, 4, 1) == a
    assert make_fewshot(split, 4, 2)["train"] != a["train"]


def test_split_files_are_relative_and_portable(tmp_path: Path) -> None:
    from promptbias.io import write_json

    split = _split()
    write_json(tmp_path / "raw" / "toy.json", split)
    few = make_fewshot(load_split(tmp_path, "toy"), 2, 3)
    write_json(paths.split_json(tmp_path, "toy", 2, 3), few)
    text = (tmp_path / "splits" / "toy" / "shot2_seed3.json").read_text()
    assert str(tmp_path) not in text
    assert all(not p.startswith("/") for p, _, _ in json.loads(text)["train"])
    assert load_fewshot(tmp_path, "toy", 2, 3) == json.loads(json.dumps(few))


def test_missing_files_tell_which_command_to_run(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="promptbias fetch dtd"):
        load_split(tmp_path, "dtd")
    with pytest.raises(UserError, match="promptbias split dtd --shots 16 --seed 1"):
        load_fewshot(tmp_path, "dtd", 16, 1)


def _imagenet_split(tmp_path: Path) -> dict:
    """The normalised split of an ImageNet folder (3 classes, 12 train and 2 val images each)."""
    from promptbias.data import registry
    from promptbias.data.layouts import load_layout

    wnids = ("n01440764", "n01443537", "n01484850")
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "classnames.txt").write_text("".join(f"{w} class {w}\n" for w in wnids))
    for w in wnids:
        for split, n in (("train", 12), ("val", 2)):
            (tmp_path / "images" / split / w).mkdir(parents=True)
            for i in range(n):
                (tmp_path / "images" / split / w / f"{w}_{split}_{i:02d}.JPEG").write_bytes(b"")
    return load_layout(registry.get("imagenet"), tmp_path)


@pytest.mark.parametrize("shots", [1, 4, 8])
def test_imagenet_val_is_drawn_from_train_outside_the_fewshot_set(tmp_path: Path, shots: int) -> None:
    split = _imagenet_split(tmp_path)
    test = {p for p, _, _ in split["test"]}
    vals = []
    for seed in (1, 2, 3):
        few = make_fewshot(split, shots, seed)
        assert few["train"] == _dassl_reference(split, shots, seed)[0]  # train: CoOp's subset, unchanged
        train, val = {p for p, _, _ in few["train"]}, {p for p, _, _ in few["val"]}
        assert val <= {p for p, _, _ in split["train"]} and not val & train and not val & test
        per_class: dict[int, int] = defaultdict(int)
        for _, label, _ in few["val"]:
            per_class[label] += 1
        assert per_class == {0: min(shots, 4), 1: min(shots, 4), 2: min(shots, 4)}
        random.seed(seed + 100)  # the global generator's state must not matter
        assert make_fewshot(split, shots, seed) == few  # deterministic given the seed
        vals.append(few["val"])
    assert vals[0] != vals[1] != vals[2]  # and a function of it


@pytest.mark.parametrize("with_imagenet", [True, False])
def test_table1_caption_says_where_imagenets_val_comes_from(with_imagenet: bool) -> None:
    from promptbias.render import table1

    def row(dataset: str) -> table1.Row:
        return table1.Row(dataset, dataset, {prefix: table1.Cell() for prefix, *_ in table1.COLUMNS})

    rows = [row("imagenet" if with_imagenet else "dtd"), row("AVERAGE")]
    said = "ImageNet's val is drawn from its train images outside the few-shot set"
    assert (said in table1.markdown(rows).split("\n")[2]) is with_imagenet  # the sentence under the title
    assert (said in next(ln for ln in table1.latex(rows).splitlines() if "caption" in ln)) is with_imagenet


def test_an_imagenet_split_whose_val_is_the_test_set_is_refused(tmp_path: Path) -> None:
    from promptbias.io import write_json

    old = _imagenet_split(tmp_path / "imagenet")
    del old["val_from_train"]
    old["val"] = old["test"]  # as fetched before val was drawn from train
    write_json(tmp_path / "data" / "raw" / "imagenet.json", old)
    with pytest.raises(
        UserError, match=r"imagenet\.json: written by an older .* `promptbias fetch imagenet`"
    ):
        load_split(tmp_path / "data", "imagenet")


# ------------------------------------------------------------------------- base-to-novel class views
def _coop_split_file(folder: Path, n_classes: int) -> dict:
    """A CoOp ``split_zhou_*.json`` with interleaved, shuffled labels; written into ``folder``."""
    rng = random.Random(n_classes)
    raw: dict[str, list] = {"train": [], "val": [], "test": []}
    for name, per_class in (("train", 20), ("val", 5), ("test", 6)):
        items = [
            [f"c{y}/{name}_{i:02d}.jpg", y, f"class_{y}"] for y in range(n_classes) for i in range(per_class)
        ]
        rng.shuffle(items)
        raw[name] = items
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "split_zhou_DescribableTextures.json").write_text(json.dumps(raw))
    return raw


def _cocoop_reference(raw: dict, shots: int, seed: int, subsample: str) -> tuple[list, list, list, list]:
    """CoCoOp's dataset pipeline written out independently: read_split, Dassl's generate_fewshot_dataset on
    train and val, then ``subsample_classes(train, val, test)``; classnames as Dassl's get_lab2cname."""
    import math
    from collections import namedtuple

    datum = namedtuple("datum", "impath label classname")

    def read(items: list) -> list:
        return [datum(f"images/{p}", int(y), c) for p, y, c in items]

    train, val, test = read(raw["train"]), read(raw["val"]), read(raw["test"])
    train_ref, val_ref = _dassl_reference({"train": train, "val": val}, shots, seed)
    labels = sorted({item.label for item in train_ref})  # the labels of the first dataset
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabeler = {y: y_new for y_new, y in enumerate(selected)}
    out = [
        [datum(it.impath, relabeler[it.label], it.classname) for it in ds if it.label in selected]
        for ds in (train_ref, val_ref, test)
    ]
    lab2cname = {it.label: it.classname for it in out[0]}
    classnames = [lab2cname[y] for y in sorted(lab2cname)]
    return (*out, classnames)


@pytest.mark.parametrize("n_classes", [5, 7, 8])  # odd: base gets the extra class (ceil)
@pytest.mark.parametrize("view", ["base", "novel"])
def test_class_views_equal_cocoop_subsample_classes(tmp_path: Path, n_classes: int, view: str) -> None:
    from promptbias.data import registry
    from promptbias.data.layouts import load_layout
    from promptbias.io import write_json

    raw = _coop_split_file(tmp_path / "dtd", n_classes)
    split = load_layout(registry.get("dtd"), tmp_path / "dtd")
    root = tmp_path / "data"
    write_json(paths.raw_json(root, "dtd"), split)
    for seed in (1, 2):
        write_json(paths.split_json(root, "dtd", 16, seed), make_fewshot(split, 16, seed))
        train, val, test, classnames = _cocoop_reference(raw, 16, seed, view)
        few = load_fewshot(root, f"dtd-{view}", 16, seed)  # through the files, as train/evaluate read them
        assert [tuple(it) for it in few["train"]] == [tuple(it) for it in train]
        assert [tuple(it) for it in few["val"]] == [tuple(it) for it in val]
        info = dataset_info({"data": {"root": str(root)}}, f"dtd-{view}")
        assert [tuple(it) for it in info.split["test"]] == [tuple(it) for it in test]
        assert info.classnames == [c.replace("_", " ") for c in classnames]  # prompt-ready, as the split's
        assert info.data == "dtd" and info.raw_split == split
    m = -(-n_classes // 2)
    assert len(classnames) == (m if view == "base" else n_classes - m)
    assert sorted({it[1] for it in test}) == list(range(len(classnames)))  # remapped to 0..


def test_a_novel_view_evaluates_the_base_views_run() -> None:
    from promptbias import protocols

    assert protocols.parse("oxford_pets-novel") == ("oxford_pets", "novel")
    assert protocols.parse("oxford_pets") == ("oxford_pets", None)
    assert protocols.train_source("oxford_pets-novel") == "oxford_pets-base"
    assert protocols.train_source("oxford_pets-base") == "oxford_pets-base"
    assert protocols.data_of("oxford_pets-base") == "oxford_pets"
    assert protocols.parse("dtd-from_imagenet") == ("dtd", "from_imagenet")
    assert (
        protocols.train_source("dtd-from_imagenet") == "imagenet"
        and protocols.data_of("dtd-from_imagenet") == "dtd"
    )
    assert protocols.parse("dtd-from_") == ("dtd-from_", None)  # no source: not a view
