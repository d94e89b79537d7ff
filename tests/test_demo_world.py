"""The demo world: deterministic files, CoOp-like layout, valid split json, caption corpus shapes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from promptbias.demo.world import (
    COLORS,
    DEMO_DATASETS,
    RARE_TEXTURES,
    background_only,
    caption_corpus,
    generate_dataset,
)

TINY = (2, 1, 3)  # train, val, test images per class


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", sorted(DEMO_DATASETS))
def test_same_seed_identical_bytes_other_seed_differs(tmp_path: Path, name: str) -> None:
    generate_dataset(name, tmp_path / "a", seed=3, per_class=TINY)
    generate_dataset(name, tmp_path / "b", seed=3, per_class=TINY)
    generate_dataset(name, tmp_path / "c", seed=4, per_class=TINY)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys()
    assert sum(a[k] != c[k] for k in a) >= len(a) - 1  # images depend on the seed


@pytest.mark.parametrize("name", sorted(DEMO_DATASETS))
def test_layout_and_split_json(tmp_path: Path, name: str) -> None:
    spec = DEMO_DATASETS[name]
    root = tmp_path / name
    generate_dataset(name, root, seed=0, per_class=TINY)
    split = json.loads((root / f"split_{name}.json").read_text())
    assert set(split) == {"train", "val", "test"}
    assert spec.template.count("{}") == 1
    n_classes = len(spec.classnames)
    assert n_classes >= 10
    for split_name, per_class in zip(("train", "val", "test"), TINY, strict=True):
        items = split[split_name]
        assert len(items) == n_classes * per_class
        labels = [label for _, label, _ in items]
        assert sorted(set(labels)) == list(range(n_classes))
        assert all(labels.count(c) == per_class for c in range(n_classes))
        for rel, label, classname in items:
            assert not Path(rel).is_absolute()
            parts = Path(rel).parts
            assert parts[0] == "images" and parts[1] == spec.folders[label]
            assert classname == spec.classnames[label] == parts[1].replace("_", " ")
            with Image.open(root / rel) as im:
                assert im.mode == "RGB" and 72 <= im.width <= 96 and 72 <= im.height <= 96
                assert im.format == {"png": "PNG", "jpg": "JPEG"}[spec.ext]


def test_full_size_counts_allow_16_shots(tmp_path: Path) -> None:
    spec = DEMO_DATASETS["demo_textures"]
    assert spec.n_train >= 16 and spec.n_test * len(spec.classnames) >= 300
    generate_dataset("demo_textures", tmp_path, seed=0)
    split = json.loads((tmp_path / "split_demo_textures.json").read_text())
    assert len(split["test"]) == spec.n_test * len(spec.classnames)
    assert len(split["train"]) == spec.n_train * len(spec.classnames)
    assert len(list((tmp_path / "images").rglob("*.jpg"))) == sum(len(v) for v in split.values())


def test_class_names_informative_vs_not() -> None:
    shapes = DEMO_DATASETS["demo_shapes"].classnames
    assert all(len(c.split()) == 2 for c in shapes)  # "<colour> <shape>"
    _, captions = caption_corpus(seed=0, n=2000, image_size=8)
    counts = Counter(w.strip(".,") for cap in captions for w in cap.split())
    textures = DEMO_DATASETS["demo_textures"].classnames
    assert all(counts[c] > 0 for c in textures)  # every name is a word the text tower learns …
    common = [counts[c] for c in textures if c not in RARE_TEXTURES]
    rare = [counts[c] for c in RARE_TEXTURES]
    assert max(rare) < 0.5 * min(common)  # … but four of them are rare
    colors = [c.split()[0] for c in DEMO_DATASETS["demo_shapes"].classnames]
    assert len(set(colors)) == len(colors)  # one colour per shapes class


def test_aerial_tiles_share_one_shift_and_keep_the_class_colour(tmp_path: Path) -> None:
    spec = DEMO_DATASETS["demo_aerial"]
    assert spec.classnames == tuple(COLORS)  # known words, seen in the corpus on objects
    generate_dataset("demo_aerial", tmp_path, seed=0, per_class=(0, 0, 6))
    split = json.loads((tmp_path / "split_demo_aerial.json").read_text())
    means: dict[str, list[np.ndarray]] = {}
    for rel, _, classname in split["test"]:
        with Image.open(tmp_path / rel) as im:
            rgb = np.asarray(im, dtype=np.float64).reshape(-1, 3).mean(0)  # 3
        means.setdefault(classname, []).append(rgb)
    every = np.stack([m for ms in means.values() for m in ms])  # N×3
    assert (every[:, 2] < 0.85 * every[:, 0]).all()  # the warm filter: every tile, whatever its class
    red, green, blue = (np.mean(means[c], axis=0) for c in ("red", "green", "blue"))
    assert red[0] - red[1] > green[0] - green[1] + 5  # … and the class colour still shows through
    assert blue[2] - blue[0] > red[2] - red[0] + 5


def test_caption_corpus_shapes_and_determinism() -> None:
    images, captions = caption_corpus(seed=1, n=24, image_size=48)
    assert images.shape == (24, 48, 48, 3) and images.dtype == np.uint8
    assert len(captions) == 24 and all(isinstance(c, str) and c for c in captions)
    images2, captions2 = caption_corpus(seed=1, n=24, image_size=48)
    assert np.array_equal(images, images2) and captions == captions2
    images3, _ = caption_corpus(seed=2, n=24, image_size=48)
    assert not np.array_equal(images, images3)
    assert images.std() > 10  # not blank


def test_background_only_marks_the_bare_texture_captions() -> None:
    captions = [
        "a photo of a small red circle on a striped background.",
        "a photo of a dotted background.",
        "a cyan cross.",
        "a zigzag background.",
    ]
    assert background_only(captions).tolist() == [False, True, False, True]
    _, corpus = caption_corpus(seed=0, n=400, image_size=8)
    share = background_only(corpus).mean()
    assert 0.2 < share < 0.4  # BACKGROUND_ONLY_SHARE = 0.3
