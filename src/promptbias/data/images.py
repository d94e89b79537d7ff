"""Image decoding, the test-transform cache, and batched train augmentation on the device.

    x, y = load_eval_images(root, "dtd", split["test"], 224)   # uint8 N×3×224×224 (cache when built)
    imgs, y = load_train_images(root, "dtd", few["train"], max_side=448)   # list of uint8 3×H×W
    aug = TrainAugment(224)
    batch = aug([imgs[i] for i in idx], generator)              # uint8 B×3×224×224 on the device
    batch = normalize(batch, clip.mean, clip.std)               # float B×3×224×224

Test transform (Dassl/CLIP): decode with PIL ``.convert("RGB")``, resize the short side to S (bicubic),
center-crop S×S — all in PIL, so cached and uncached tensors are bit-identical. ``build_cache`` stores the
transformed test+val images of a dataset once as ``data/cache/<ds>/images_<S>.npy`` (uint8 N×3×S×S,
memory-mapped on read) plus ``images_<S>.json`` (the paths and the sha256 of each source file, written
last: a cache without it does not exist). A read from the cache checks the requested images' bytes
against those digests: an image replaced since the cache was built is a stale cache, refused in one line. Train augmentation = RandomResizedCrop(S, scale 0.08–1, ratio 3/4–4/3, bicubic, antialias) +
horizontal flip, drawn from a ``torch.Generator`` and run per batch on the device.

A missing or corrupt image raises UserError naming the file; with ``skip_bad=True`` it is skipped and
recorded (``skipped`` list argument, and the cache index) instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from promptbias import identity, paths
from promptbias.errors import UserError
from promptbias.io import atomic_path, read_json, write_json

BICUBIC = Image.Resampling.BICUBIC


def _workers(num_workers: int | None) -> int:
    return max(1, num_workers if num_workers is not None else min(8, os.cpu_count() or 1))


def decode(path: Path | str) -> Image.Image:
    """The image as RGB; a missing or undecodable file is a UserError naming it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"{path}: image file missing — re-fetch the dataset (`promptbias fetch`)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UserError(
            f"{path}: corrupt image ({reason}) — replace the file (re-fetch the dataset: `promptbias fetch`)"
        ) from None


def resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """torchvision ``Resize(size, bicubic)`` + ``CenterCrop(size)`` on a PIL image → uint8 3×S×S."""
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), BICUBIC)
    top = round((new_h - size) / 2.0)
    left = round((new_w - size) / 2.0)
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _eval_one(path: Path, size: int, skip_bad: bool) -> np.ndarray | None:
    try:
        return resize_center_crop(decode(path), size)
    except UserError:
        if skip_bad:
            return None
        raise


def _progress(total: int, desc: str) -> Any:
    """A bar on a terminal, periodic lines in a log (:mod:`promptbias.progress`)."""
    from promptbias.progress import progress_bar

    return progress_bar(total, desc, "img")


def decode_eval(
    folder: Path, rel_paths: Sequence[str], size: int, num_workers: int | None = None, skip_bad: bool = False
) -> tuple[np.ndarray, list[int]]:
    """Test-transform every path (threads); returns uint8 N'×3×S×S and the indices that failed."""
    out = np.empty((len(rel_paths), 3, size, size), dtype=np.uint8)
    bad: list[int] = []
    with (
        ThreadPoolExecutor(_workers(num_workers)) as pool,
        _progress(len(rel_paths), f"decode {Path(folder).name}") as bar,
    ):
        for i, arr in enumerate(pool.map(lambda p: _eval_one(folder / p, size, skip_bad), rel_paths)):
            if arr is None:
                bad.append(i)
            else:
                out[i] = arr
            bar.update(1)
    if bad:
        out = np.delete(out, bad, axis=0)
    return out, bad


# ----------------------------------------------------------------------------------------- the cache


def build_cache(
    root: Path | str,
    dataset: str,
    items: Sequence[Sequence[Any]],
    size: int,
    num_workers: int | None = None,
    skip_bad: bool = False,
) -> Path:
    """Decode + test-transform ``items`` once into the cache (atomic: the index is written last)."""
    folder = paths.raw_dir(root, dataset)
    rel_paths = list(dict.fromkeys(str(it[0]) for it in items))  # unique, in order
    npy, index = paths.cache_files(root, dataset, size)
    index.unlink(missing_ok=True)
    arr, bad = decode_eval(folder, rel_paths, size, num_workers, skip_bad)
    bad_set = set(bad)
    skipped = [rel_paths[i] for i in bad]
    kept = [p for i, p in enumerate(rel_paths) if i not in bad_set]
    with atomic_path(npy, suffix=".npy") as tmp, open(tmp, "wb") as fh:
        # streamed in chunks through fh.write (not a memmap, not ndarray.tofile): a full disk is then an
        # OSError(ENOSPC) → one-line error, instead of a SIGBUS crash or an OSError without errno
        np.lib.format.write_array(_ChunkWriter(fh), np.ascontiguousarray(arr), allow_pickle=False)
    sha256 = identity.sha256_files(folder, kept, _workers(num_workers))  # what each row was made from
    write_json(
        index,
        {
            "dataset": dataset,
            "size": size,
            "count": len(kept),
            "paths": kept,
            "sha256": sha256,
            "skipped": skipped,
        },
    )
    return npy


class _ChunkWriter:
    """Only a ``write`` method: numpy's ``write_array`` then writes in buffered chunks via ``write``."""

    def __init__(self, fh: Any) -> None:
        self.write = fh.write


def _cache_lookup(
    root: Path | str, dataset: str, size: int
) -> tuple[np.ndarray, dict[str, int], set[str], list[str]] | None:
    npy, index = paths.cache_files(root, dataset, size)
    if not (index.is_file() and npy.is_file()):
        return None
    meta = read_json(index)
    arr = np.load(npy, mmap_mode="r")
    if meta.get("size") != size or arr.shape[0] != len(meta["paths"]) or arr.shape[1:] != (3, size, size):
        return None
    if len(meta.get("sha256") or []) != len(meta["paths"]):
        raise UserError(
            f"{index}: the image cache records no content digests (an older promptbias) — rebuild it: "
            f"`promptbias cache {dataset}`"
        )
    return arr, {p: i for i, p in enumerate(meta["paths"])}, set(meta.get("skipped", [])), meta["sha256"]


def _check_cached_rows(
    root: Path | str, dataset: str, rel: list[str], rows: list[int], recorded: list[str], workers: int | None
) -> None:
    """UserError unless every cached row still matches its image file's bytes (a replaced image is new)."""
    current = identity.sha256_files(paths.raw_dir(root, dataset), rel, _workers(workers))
    changed = [p for p, row, d in zip(rel, rows, current, strict=True) if recorded[row] != d]
    if changed:
        raise UserError(
            f"{paths.cache_dir(root, dataset)}: {len(changed)} image(s) changed since the cache was built "
            f"(e.g. {changed[0]}) — rebuild it: `promptbias cache {dataset}`"
        )


def content_digest(
    root: Path | str, dataset: str, rel_paths: Sequence[str], num_workers: int | None = None
) -> str:
    """One digest of the ordered image files' bytes (what memoised features of them are keyed on)."""
    digests = identity.sha256_files(paths.raw_dir(root, dataset), list(rel_paths), _workers(num_workers))
    return identity.listing_digest(list(rel_paths), digests)


def load_eval_images(
    root: Path | str,
    dataset: str,
    items: Sequence[Sequence[Any]],
    image_size: int,
    cache: bool = True,
    *,
    num_workers: int | None = None,
    skip_bad: bool = False,
    skipped: list[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Test-transformed images (uint8 N×3×S×S) and labels; from the cache where it holds them.

    With ``skip_bad`` unreadable images are dropped (their paths appended to ``skipped``).
    """
    rel = [str(it[0]) for it in items]
    labels = [int(it[1]) for it in items]
    out = np.empty((len(rel), 3, image_size, image_size), dtype=np.uint8)
    todo = list(range(len(rel)))
    bad: list[int] = []
    hit = _cache_lookup(root, dataset, image_size) if cache else None
    if hit is not None:
        arr, row_of, cached_bad, recorded = hit
        rows = [(i, row_of[p]) for i, p in enumerate(rel) if p in row_of]
        if rows:
            dst, src = zip(*rows, strict=True)
            _check_cached_rows(root, dataset, [rel[i] for i in dst], list(src), recorded, num_workers)
            out[list(dst)] = arr[np.asarray(src)]
        for i in (i for i, p in enumerate(rel) if p in cached_bad):
            if not skip_bad:
                raise UserError(
                    f"{Path(root) / 'raw' / dataset / rel[i]}: recorded as unreadable in the image cache — "
                    f"replace it (re-fetch the dataset) and rebuild the cache: `promptbias cache {dataset}`"
                )
            bad.append(i)
        todo = [i for i, p in enumerate(rel) if p not in row_of and p not in cached_bad]
    if todo:
        arr, failed = decode_eval(
            paths.raw_dir(root, dataset), [rel[i] for i in todo], image_size, num_workers, skip_bad
        )
        failed_set = set(failed)
        ok = [i for k, i in enumerate(todo) if k not in failed_set]
        out[ok] = arr
        bad += [todo[k] for k in failed]
    if bad:
        bad.sort()
        if skipped is not None:
            skipped.extend(rel[i] for i in bad)
        keep = np.setdiff1d(np.arange(len(rel)), bad)
        out, labels = out[keep], [labels[i] for i in keep]
    return torch.from_numpy(out), torch.tensor(labels, dtype=torch.long)


# ------------------------------------------------------------------------------------------ training


def _train_one(path: Path, max_side: int | None, skip_bad: bool) -> torch.Tensor | None:
    try:
        img = decode(path)
    except UserError:
        if skip_bad:
            return None
        raise
    if max_side is not None and max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())


def load_train_images(
    root: Path | str,
    dataset: str,
    items: Sequence[Sequence[Any]],
    max_side: int | None = None,
    *,
    num_workers: int | None = None,
    skip_bad: bool = False,
    skipped: list[str] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Decoded train images (uint8 3×H×W each, longer side capped at ``max_side``) and labels."""
    folder = paths.raw_dir(root, dataset)
    images: list[torch.Tensor] = []
    labels: list[int] = []
    with ThreadPoolExecutor(_workers(num_workers)) as pool:
        decoded = pool.map(lambda it: _train_one(folder / str(it[0]), max_side, skip_bad), items)
        for item, img in zip(items, decoded, strict=True):
            if img is None:
                if skipped is not None:
                    skipped.append(str(item[0]))
                continue
            images.append(img)
            labels.append(int(item[1]))
    return images, torch.tensor(labels, dtype=torch.long)


class TrainAugment:
    """RandomResizedCrop(S, scale, ratio, bicubic + antialias) + horizontal flip, one batch at a time.

    Crop boxes follow torchvision's rule (10 tries of area/log-ratio, then a center-crop fallback), drawn
    for the whole batch from ``generator``; crops are resized on ``device`` (default: the generator's).
    """

    def __init__(
        self,
        image_size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        device: torch.device | str | None = None,
    ) -> None:
        self.size, self.scale, self.ratio, self.flip_p = image_size, scale, ratio, flip_p
        self.device = torch.device(device) if device is not None else None

    def crop_boxes(self, hw: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Boxes (top, left, h, w) as a long B×4 CPU tensor for image sizes ``hw`` (B×2)."""
        dev = generator.device
        b, tries = hw.shape[0], 10
        u = torch.rand((b, tries, 4), generator=generator, device=dev).to("cpu", torch.float64)
        height, width = hw[:, 0:1].double(), hw[:, 1:2].double()
        area = height * width * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[..., 0])
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(lo + (hi - lo) * u[..., 1])
        w = torch.round(torch.sqrt(area * aspect))
        h = torch.round(torch.sqrt(area / aspect))
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        top = torch.floor(u[..., 2] * (height - h + 1))
        left = torch.floor(u[..., 3] * (width - w + 1))
        first = torch.where(ok.any(1), ok.double().argmax(1), torch.full((b,), -1)).long()
        boxes = torch.empty((b, 4), dtype=torch.long)
        for k in range(b):
            j = int(first[k])
            if j >= 0:
                boxes[k] = torch.stack([top[k, j], left[k, j], h[k, j], w[k, j]]).long()
            else:
                boxes[k] = torch.tensor(self._fallback(int(hw[k, 0]), int(hw[k, 1])))
        return boxes

    def _fallback(self, height: int, width: int) -> tuple[int, int, int, int]:
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, round(width / min(self.ratio))
        elif in_ratio > max(self.ratio):
            h, w = height, round(height * max(self.ratio))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(
            x, size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False
        )

    def __call__(self, images: Sequence[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        device = self.device or generator.device
        hw = torch.tensor([img.shape[-2:] for img in images], dtype=torch.long)
        boxes = self.crop_boxes(hw, generator).tolist()
        out = torch.empty((len(images), 3, self.size, self.size), dtype=torch.uint8, device=device)
        for k, (img, (top, left, h, w)) in enumerate(zip(images, boxes, strict=True)):
            crop = img[None, :, top : top + h, left : left + w].to(device, non_blocking=True)
            if device.type == "cpu":  # torch's uint8 antialiased kernel: ~10× faster than float on CPU
                out[k] = self._resize(crop.contiguous())[0]
            else:
                out[k] = self._resize(crop.float())[0].round_().clamp_(0, 255).to(torch.uint8)
        flip = torch.rand(len(images), generator=generator, device=generator.device) < self.flip_p
        flip = flip.to(device)
        out[flip] = out[flip].flip(-1)
        return out


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 B×3×S×S → float32 ``(x/255 − mean)/std`` on the images' device."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.float().div_(255.0) - m) / s
