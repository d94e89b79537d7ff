"""Image decoding, the test-transform cache, and batched train augmentation on the device.

    x, y = load_eval_images(root, "dtd", split["test"], 224)   # uint8 N×3×224×224 (cache when built)
    imgs, y = load_train_images(root, "dtd", few["train"], max_side=448)   # list of uint8 3×H×W
    aug = TrainAugment(224)
    batch = aug([imgs[i] for i in idx], generator)              # uint8 B×3×224×224 on the device
    batch = normalize(batch, clip.mean, clip.std)               # float B×3×224×224

Test transform (Dassl/CLIP): decode with PIL ``.convert("RGB")``, resize the short side to S (bicubic),
center-crop S×S — all in PIL, so cached and uncached tensors are bit-identical. ``build_cache`` stores the
transformed test+val images of a dataset once as ``data/cache/<ds>/images_<S>.npy`` (uint8 N×3×S×S,
plus ``images_<S>.json`` (the paths and the sha256 of each source file, the sha256 of the .npy header and
of each 32 MiB block of its rows, and a seal over the index itself; written last: a cache without it does
not exist). A read from the cache checks the requested images' files against their digests (an image
replaced since the cache was built is a stale cache, refused in one line) and reads each block of rows it
needs once, checking it against its recorded digest before using it (a cache damaged in place, an
edited or swapped index: "stale cache … rebuild it: `promptbias cache <ds>`"). Train augmentation = RandomResizedCrop(S, scale 0.08–1, ratio 3/4–4/3, bicubic, antialias) +
horizontal flip, drawn from a ``torch.Generator`` and run per batch on the device.

A missing or corrupt image raises UserError naming the file (so does one over PIL's decompression-bomb
limit of ~89 megapixels, refused rather than decoded); with ``skip_bad=True`` it is skipped and
recorded (``skipped`` list argument, and the cache index) instead.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from promptbias import identity, paths
from promptbias.data.split_check import image_path  # the one join of a split path for opening
from promptbias.errors import UserError
from promptbias.io import atomic_path, read_json, write_json

BICUBIC = Image.Resampling.BICUBIC

# PIL warns (a second stderr line) between MAX_IMAGE_PIXELS and twice that, and raises above: both are
# refused here in one line (an image over ~89 megapixels in a classification dataset is a bomb or a
# broken mirror; every transform of promptbias needs a few hundred pixels a side). The warning is made
# an error by a process-wide filter, (re)installed at the front before each open: warnings.catch_warnings
# is not thread-safe (decode runs in worker threads), and a caller's catch_warnings may drop the filter.
_BOMB_FILTER = ("error", None, Image.DecompressionBombWarning, None, 0)


def _refuse_bombs() -> None:
    if warnings.filters[:1] != [_BOMB_FILTER]:
        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def _workers(num_workers: int | None) -> int:
    return max(1, num_workers if num_workers is not None else min(8, os.cpu_count() or 1))


def decode(path: Path | str) -> Image.Image:
    """The image as RGB; a missing or undecodable file (or a decompression bomb) is a UserError naming it."""
    _refuse_bombs()
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"{path}: image file missing — re-fetch the dataset (`promptbias fetch`)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise UserError(_bomb_message(path, exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UserError(
            f"{path}: corrupt image ({reason}) — replace the file (re-fetch the dataset: `promptbias fetch`)"
        ) from None


def _bomb_message(path: Path | str, exc: Exception) -> str:
    """One line for PIL's decompression-bomb warning or error ("Image size (N pixels) exceeds limit …")."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"
    limit = (Image.MAX_IMAGE_PIXELS or 0) / 1e6
    return (
        f"{path}: image of {size}, over PIL's decompression-bomb limit of {limit:.0f} megapixels — refused; "
        "replace it with a downscaled copy (or drop it from the split) and re-fetch"
    )


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
        decoded = pool.map(lambda p: _eval_one(image_path(folder, p), size, skip_bad), rel_paths)
        for i, arr in enumerate(decoded):
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
    arr = np.ascontiguousarray(arr)
    with atomic_path(npy, suffix=".npy") as tmp:
        with open(tmp, "wb") as fh:
            # streamed in chunks through fh.write (not a memmap, not ndarray.tofile): a full disk is then an
            # OSError(ENOSPC) → one-line error, instead of a SIGBUS crash or an OSError without errno
            np.lib.format.write_array(_ChunkWriter(fh), arr, allow_pickle=False)
        npy_record = npy_digests(tmp, arr, _workers(num_workers))
    sha256 = identity.sha256_files(folder, kept, _workers(num_workers))  # what each row was made from
    write_cache_index(index, dataset, size, kept, sha256, skipped, npy_record)
    return npy


# The cache's own bytes: the .npy header's sha256 and one sha256 per block of CHUNK_BYTES rows, recorded in
# the index when the cache is built and checked on every read (only the blocks a read needs), so a cache
# damaged in place (same size, same mtime) is refused instead of used. The index carries a seal (the
# sha256 of the rest of it), so an edited, reordered or swapped index is refused too.
CHUNK_BYTES = 32 << 20
DIGEST = "sha256"  # hashlib: releases the GIL, SHA-NI on x86 (~1 GB/s a core)


def npy_digests(npy: Path, arr: np.ndarray, workers: int = 1) -> dict[str, Any]:
    """What the index records about the .npy file holding ``arr``: its size, header digest, block digests."""
    size = npy.stat().st_size
    offset = size - arr.nbytes
    with open(npy, "rb") as fh:
        header = fh.read(offset)
    row_bytes = math.prod(arr.shape[1:]) * arr.itemsize
    chunk_rows = max(1, CHUNK_BYTES // max(1, row_bytes))
    flat = arr.reshape(len(arr), row_bytes)
    blocks = [flat[i : i + chunk_rows] for i in range(0, len(arr), chunk_rows)]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        chunks = list(pool.map(lambda b: hashlib.new(DIGEST, memoryview(b)).hexdigest(), blocks))
    return {
        "bytes": size,
        "digest": DIGEST,
        "header": hashlib.new(DIGEST, header).hexdigest(),
        "chunk_rows": chunk_rows,
        "chunks": chunks,
    }


def _seal(meta: dict[str, Any]) -> str:
    return identity.digest({k: v for k, v in meta.items() if k != "seal"}, length=64)


def write_cache_index(
    index: Path,
    dataset: str,
    size: int,
    kept: list[str],
    sha256: list[str],
    skipped: list[str],
    npy_record: dict[str, Any],
) -> None:
    """Write the cache index (last: a cache without it does not exist), sealed with its own digest."""
    meta = {
        "dataset": dataset,
        "size": size,
        "count": len(kept),
        "paths": kept,
        "sha256": sha256,
        "skipped": skipped,
        "npy": npy_record,
    }
    write_json(index, meta | {"seal": _seal(meta)})


class _ChunkWriter:
    """Only a ``write`` method: numpy's ``write_array`` then writes in buffered chunks via ``write``."""

    def __init__(self, fh: Any) -> None:
        self.write = fh.write


def _stale(path: Path, dataset: str, why: str) -> UserError:
    return UserError(f"{path}: stale cache ({why}) — rebuild it: `promptbias cache {dataset}`")


@dataclass(frozen=True)
class CachedImages:
    """An image cache whose index and .npy header were checked; its rows are verified as they are read."""

    npy: Path
    dataset: str
    size: int
    offset: int
    chunk_rows: int
    chunks: list[str]
    row_of: dict[str, int]
    skipped: set[str]
    recorded: list[str]

    def read_into(self, out: np.ndarray, dst: Sequence[int], src: Sequence[int], workers: int = 1) -> None:
        """``out[dst[k]] = row src[k]``, every block read once and checked against its recorded digest."""
        wanted: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for k, row in zip(dst, src, strict=True):
            wanted[row // self.chunk_rows].append((k, row))
        row_bytes = 3 * self.size * self.size
        count = len(self.recorded)
        with open(self.npy, "rb") as fh:
            fd = fh.fileno()

            def one(chunk: int) -> None:
                first = chunk * self.chunk_rows
                n = min(self.chunk_rows, count - first)
                buf = np.empty(n * row_bytes, dtype=np.uint8)
                _pread_into(fd, buf, self.offset + first * row_bytes, self.npy, self.dataset)
                if hashlib.new(DIGEST, buf).hexdigest() != self.chunks[chunk]:
                    raise _stale(
                        self.npy, self.dataset, "its bytes do not match the digest recorded when it was built"
                    )
                pairs = wanted[chunk]
                block = buf.reshape(n, 3, self.size, self.size)
                out[[k for k, _ in pairs]] = block[[row - first for _, row in pairs]]

            with ThreadPoolExecutor(max(1, min(workers, len(wanted)))) as pool:
                list(pool.map(one, sorted(wanted)))


def _pread_into(fd: int, buf: np.ndarray, offset: int, npy: Path, dataset: str) -> None:
    view = memoryview(buf).cast("B")
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise _stale(npy, dataset, "the file is shorter than recorded when it was built")
        done += n


def _cache_lookup(root: Path | str, dataset: str, size: int) -> CachedImages | None:
    """The checked cache of ``dataset`` at ``size`` px, None when there is none; a damaged one is refused."""
    npy, index = paths.cache_files(root, dataset, size)
    if not (index.is_file() and npy.is_file()):
        return None
    try:
        meta = read_json(index)
    except (ValueError, UnicodeDecodeError):
        raise _stale(index, dataset, "its index is not valid JSON") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("npy"), dict) or "seal" not in meta:
        raise _stale(index, dataset, "its index records no digest of the cache's bytes (an older promptbias)")
    if meta["seal"] != _seal(meta):
        raise _stale(
            index, dataset, "the index was edited after the cache was built: it does not match its seal"
        )
    if meta.get("dataset") != dataset or meta.get("size") != size:
        raise _stale(
            index,
            dataset,
            f"built for {meta.get('dataset')} at {meta.get('size')} px, not {dataset} at {size} px",
        )
    rec, count = meta["npy"], len(meta["paths"])
    if not (
        meta["count"] == count == len(meta["sha256"]) and len(rec["chunks"]) == -(-count // rec["chunk_rows"])
    ):
        raise _stale(index, dataset, "its index does not add up")
    offset = _check_npy_header(npy, dataset, rec, (count, 3, size, size))
    return CachedImages(
        npy, dataset, size, offset, rec["chunk_rows"], rec["chunks"],
        {p: i for i, p in enumerate(meta["paths"])}, set(meta["skipped"]), meta["sha256"],
    )  # fmt: skip


def _check_npy_header(npy: Path, dataset: str, rec: dict[str, Any], shape: tuple[int, ...]) -> int:
    """The data offset of the .npy file, after checking its size, header digest and header contents."""
    if npy.stat().st_size != rec["bytes"]:
        raise _stale(npy, dataset, f"{npy.stat().st_size} bytes, {rec['bytes']} when it was built")
    with open(npy, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            got_shape, fortran, dtype = read[version](fh)
        except (ValueError, KeyError):
            got_shape, fortran, dtype = None, None, None
        offset = fh.tell()
        fh.seek(0)
        header = fh.read(offset)
    if hashlib.new(DIGEST, header).hexdigest() != rec["header"] or (got_shape, fortran, dtype) != (
        shape,
        False,
        np.dtype(np.uint8),
    ):
        raise _stale(npy, dataset, "its header does not match the digest recorded when it was built")
    return offset


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
        row_of, cached_bad = hit.row_of, hit.skipped
        rows = [(i, row_of[p]) for i, p in enumerate(rel) if p in row_of]
        if rows:
            dst, src = zip(*rows, strict=True)
            _check_cached_rows(root, dataset, [rel[i] for i in dst], list(src), hit.recorded, num_workers)
            hit.read_into(out, dst, src, _workers(num_workers))
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
        decoded = pool.map(lambda it: _train_one(image_path(folder, str(it[0])), max_side, skip_bad), items)
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
