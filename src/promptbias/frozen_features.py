"""Image features that no learnable tensor touches, computed once per dataset and shared by seeds.

    feats, hit = frozen_features.memo(cfg, clip, dataset, rel_paths, compute)   # N×E, from disk when memoised

Zero-shot CLIP (and any method without vision prompts or biases) sees the test images through the frozen
image tower alone, so its test-set image features are the same for every seed: the first evaluation
writes them to ``<data.root>/features/<dataset>/<key>.safetensors`` and the others read them. The key
is a digest of everything the features depend on, by content: the model name and the weights' sha256
(or the open_clip tag), the promptbias code and open_clip version, image size, device type, precision,
batch size, cpu_threads, and the ordered image files with the sha256 of their bytes — so a replaced
image or weights file is a miss, never a stale hit. Results are bit-identical to recomputing (same
tensors, same batch slices for the logits); ``tests/test_frozen_features.py`` checks it. A randomly
initialised backbone (``pretrained: null``) depends on the seed and is never memoised. The folder is
a throw-away cache outside DVC's outputs: deleting it only costs the recomputation. Each memo records its
key, shape, dtype and the sha256 of its bytes in its safetensors metadata and is used only when all of
them verify; a damaged or converted memo is recomputed and replaced (see :func:`read_memo`). Memos are
written like every other output (atomically, with the umask's permissions).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from promptbias import paths

MEMO_VERSION = 2  # bump when the way features are computed changes


def memo_key(cfg: dict[str, Any], clip: Any, dataset: str, rel_paths: list[str]) -> str | None:
    """The memo key of one dataset's frozen image features, or None when they must not be memoised."""
    import open_clip

    from promptbias import identity
    from promptbias.data.images import content_digest

    if not cfg["model"]["pretrained"]:
        return None
    parts = {
        "memo": MEMO_VERSION,
        "backbone": identity.backbone(cfg["model"]),
        "open_clip": open_clip.__version__,
        "code": identity.code(),
        "image_size": clip.image_size,
        "device": clip.device.type,
        "precision": cfg["model"]["precision"],
        "batch_size": cfg["train"]["eval_batch_size"],
        "cpu_threads": cfg["cpu_threads"],
        "dataset": dataset,
        "images": content_digest(cfg["data"]["root"], dataset, rel_paths, cfg["data"]["num_workers"]),
    }
    return identity.digest(parts, length=24)


def memo(
    cfg: dict[str, Any],
    clip: Any,
    dataset: str,
    rel_paths: list[str],
    compute: Callable[[], torch.Tensor],
) -> tuple[torch.Tensor, bool]:
    """(features N×E, hit): read the memoised features, or ``compute()`` them and write them atomically.

    A memo is used only when it verifies (:func:`read_memo`); a damaged one is recomputed and replaced.
    """
    from safetensors.torch import save

    from promptbias.io import atomic_path

    key = memo_key(cfg, clip, dataset, rel_paths)
    if key is None:
        return compute(), False
    path = paths.features_file(cfg["data"]["root"], dataset, key)
    feats = read_memo(path, key, len(rel_paths))
    if feats is not None:
        return feats, True
    feats = compute().contiguous()
    data = save({"features": feats}, metadata=_record(feats, key))
    with atomic_path(path, suffix=".safetensors") as tmp:  # parallel seeds: the last rename wins, same bytes
        tmp.write_bytes(data)  # not safetensors' save_file: it renames its own 0600 temporary over tmp
    return feats, False


def _digest(feats: torch.Tensor) -> str:
    raw = feats.detach().cpu().contiguous().view(torch.uint8).numpy()
    return hashlib.sha256(memoryview(raw)).hexdigest()


def _record(feats: torch.Tensor, key: str) -> dict[str, str]:
    """The memo's own description, kept in its safetensors metadata and checked on every read."""
    return {
        "key": key,
        "shape": json.dumps(list(feats.shape)),
        "dtype": str(feats.dtype).removeprefix("torch."),
        "sha256": _digest(feats),
    }


def read_memo(path: Path, key: str, n_images: int) -> torch.Tensor | None:
    """The memoised N×E features at ``path`` if they verify, else None (missing, unreadable or damaged).

    Verified: one tensor ``features``, 2-D with one row per image, and its key, shape, dtype and the
    sha256 of its bytes equal to what was recorded when it was written. A damaged memo is never used; it
    is recomputed, not refused: the folder is a throw-away cache whose content is fully determined by its
    key, so the recomputation is the repair (and costs what a first run costs).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = path.read_bytes()
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
        tensors = load(data)
    except (OSError, SafetensorError, ValueError, AttributeError):
        return None
    feats = tensors.get("features")
    if set(tensors) != {"features"} or feats is None or feats.dim() != 2 or feats.shape[0] != n_images:
        return None
    return feats if meta == _record(feats, key) else None
