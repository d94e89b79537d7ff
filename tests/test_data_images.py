"""Image pipeline: PIL test transform, bit-exact cache, batched train augmentation, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from promptbias import paths
from promptbias.data import images
from promptbias.errors import UserError

SIZE = 16


def _picture(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _dataset(root: Path, sizes: list[tuple[int, int]]) -> list[list]:
    items = []
    for i, (w, h) in enumerate(sizes):
        rel = f"imgs/c{i % 2}/{i}.{'jpg' if i % 2 else 'png'}"
        path = root / "raw" / "toy" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _picture(w, h, i).save(path)
        items.append([rel, i % 2, f"c{i % 2}"])
    return items


SIZES = [(40, 30), (30, 41), (16, 16), (17, 50), (64, 20)]


@pytest.mark.parametrize(("w", "h"), [(40, 30), (30, 41), (33, 33), (17, 50), (101, 19)])
def test_test_transform_matches_torchvision(w: int, h: int) -> None:
    from torchvision import transforms as T

    img = _picture(w, h, 7)
    ref = T.Compose([T.Resize(SIZE, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(SIZE)])(img)
    ours = images.resize_center_crop(img, SIZE)
    assert ours.shape == (3, SIZE, SIZE) and ours.dtype == np.uint8
    assert np.array_equal(ours, np.asarray(ref).transpose(2, 0, 1))


def test_cached_and_uncached_are_bit_identical(tmp_path: Path) -> None:
    items = _dataset(tmp_path, SIZES)
    plain, y_plain = images.load_eval_images(tmp_path, "toy", items, SIZE, cache=False, num_workers=2)
    npy = images.build_cache(tmp_path, "toy", items[::-1] + items[:2], SIZE, num_workers=2)  # order/dupes
    assert np.load(npy, mmap_mode="r").shape == (len(items), 3, SIZE, SIZE)
    with pytest.MonkeyPatch.context() as mp:  # the cached load must not decode the image files
        mp.setattr(images, "decode", lambda path: pytest.fail(f"decoded {path} although it is cached"))
        cached, y_cached = images.load_eval_images(tmp_path, "toy", items, SIZE)
    assert cached.dtype == torch.uint8 and cached.shape == (len(items), 3, SIZE, SIZE)
    assert torch.equal(plain, cached) and torch.equal(y_plain, y_cached)
    assert y_cached.tolist() == [it[1] for it in items]


def test_cache_without_its_index_is_ignored(tmp_path: Path) -> None:
    items = _dataset(tmp_path, SIZES[:2])
    images.build_cache(tmp_path, "toy", items, SIZE)
    npy, index = paths.cache_files(tmp_path, "toy", SIZE)
    np.save(npy, np.zeros((2, 3, SIZE, SIZE), np.uint8))  # tampered data …
    index.unlink()  # … of an unfinished build: not used
    x, _ = images.load_eval_images(tmp_path, "toy", items, SIZE)
    assert x.float().mean() > 0
    assert paths.cache_files(tmp_path, "toy", 32)[0].name == "images_32.npy"  # keyed by size


def test_corrupt_image_fails_with_one_line_naming_it(tmp_path: Path) -> None:
    items = _dataset(tmp_path, SIZES[:3])
    bad = tmp_path / "raw" / "toy" / items[1][0]
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(UserError) as err:
        images.load_eval_images(tmp_path, "toy", items, SIZE, cache=False)
    assert (
        str(bad) in str(err.value) and "\n" not in str(err.value) and "re-fetch the dataset" in str(err.value)
    )
    assert "--skip-bad" not in str(err.value)  # train and evaluate take no such option
    skipped: list[str] = []
    x, y = images.load_eval_images(tmp_path, "toy", items, SIZE, cache=False, skip_bad=True, skipped=skipped)
    assert skipped == [items[1][0]] and x.shape[0] == 2 and y.tolist() == [items[0][1], items[2][1]]


def test_cache_records_skipped_images_and_still_refuses_them_by_default(tmp_path: Path) -> None:
    items = _dataset(tmp_path, SIZES[:3])
    (tmp_path / "raw" / "toy" / items[2][0]).unlink()
    with pytest.raises(UserError, match="image file missing"):
        images.build_cache(tmp_path, "toy", items, SIZE)
    images.build_cache(tmp_path, "toy", items, SIZE, skip_bad=True)
    with pytest.raises(UserError, match=r"recorded as unreadable"):
        images.load_eval_images(tmp_path, "toy", items, SIZE)
    skipped: list[str] = []
    x, _ = images.load_eval_images(tmp_path, "toy", items, SIZE, skip_bad=True, skipped=skipped)
    assert x.shape[0] == 2 and skipped == [items[2][0]]


def test_train_images_are_decoded_once_with_a_side_cap(tmp_path: Path) -> None:
    items = _dataset(tmp_path, [(60, 30), (10, 12)])
    imgs, y = images.load_train_images(tmp_path, "toy", items, max_side=20)
    assert [tuple(t.shape) for t in imgs] == [(3, 10, 20), (3, 12, 10)] and imgs[0].dtype == torch.uint8
    assert y.tolist() == [0, 1]


def test_augment_shapes_ranges_and_determinism() -> None:
    batch = [
        torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
        for h, w in [(30, 40), (50, 17), (24, 24), (9, 70)]
    ]
    aug = images.TrainAugment(SIZE)
    a = aug(batch, torch.Generator().manual_seed(0))
    b = aug(batch, torch.Generator().manual_seed(0))
    c = aug(batch, torch.Generator().manual_seed(1))
    assert a.shape == (4, 3, SIZE, SIZE) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    hw = torch.tensor([[30, 40], [50, 17], [24, 24], [9, 70]] * 50)
    boxes = aug.crop_boxes(hw, torch.Generator().manual_seed(3))
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (h > 0).all() and (w > 0).all()
    assert (top + h <= hw[:, 0]).all() and (left + w <= hw[:, 1]).all()
    frac = (h * w).double() / (hw[:, 0] * hw[:, 1]).double()
    assert frac.min() > 0.03 and frac.max() <= 1.0 and frac.std() > 0.1  # scale 0.08–1 after rounding


def test_full_crop_and_certain_flip_is_a_mirror_image() -> None:
    img = torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8)
    aug = images.TrainAugment(SIZE, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0)
    out = aug([img], torch.Generator().manual_seed(0))
    assert torch.equal(out[0], img.flip(-1))
    keep = images.TrainAugment(SIZE, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    assert torch.equal(keep([img], torch.Generator().manual_seed(0))[0], img)


def test_normalize_uses_mean_and_std() -> None:
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    x[1] = 0
    out = images.normalize(x, (0.5, 0.25, 0.0), (0.5, 0.25, 2.0))
    assert out.dtype == torch.float32
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([1.0, 3.0, 0.5]))
    assert torch.allclose(out[1, :, 0, 0], torch.tensor([-1.0, -1.0, 0.0]))
