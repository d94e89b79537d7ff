"""Image features that no learnable tensor touches, computed once per dataset and shared by seeds.

    feats = frozen_features.memo(cfg, clip, dataset, rel_paths, compute)   # N×E, from disk when memoised

Zero-shot CLIP (and any method without vision prompts or biases) sees the test images through the frozen
image tower alone, so its test-set image features are the same for every seed: the first evaluation
writes them to ``<data.root>/features/<dataset>/<key>.safetensors`` and the others read them. The key
hashes everything the features depend on — model name, pretrained tag or weights file (path, size,
mtime), open_clip and promptbias versions, image size, device type, precision, batch size and the
ordered list of images — so a changed input is a miss, never a stale hit. Results are bit-identical to
recomputing (same tensors, same batch slices for the logits); ``tests/test_frozen_features.py`` checks
it. A randomly initialised backbone (``pretrained: null``) depends on the seed and is never memoised.
The folder is a throw-away cache outside DVC's outputs: deleting it only costs the recomputation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MEMO_VERSION = 1  # bump when the way features are computed changes


def memo_key(cfg: dict[str, Any], clip: Any, dataset: str, rel_paths: list[str]) -> str | None:
    """The memo key of one dataset's frozen image features, or None when they must not be memoised."""
    import open_clip

    from promptbias import __version__

    pretrained = cfg["model"].get("pretrained")
    if not pretrained:
        return None
    weights = Path(str(pretrained))
    source: Any = str(pretrained)
    if weights.is_file():
        stat = weights.stat()
        source = [str(weights.resolve()), stat.st_size, stat.st_mtime_ns]
    parts = {
        "memo": MEMO_VERSION,
        "model": cfg["model"]["name"],
        "pretrained": source,
        "open_clip": open_clip.__version__,
        "promptbias": __version__,
        "image_size": clip.image_size,
        "device": clip.device.type,
        "precision": cfg["model"].get("precision", "auto"),
        "batch_size": cfg["train"].get("eval_batch_size", 100),
        "dataset": dataset,
        "images": hashlib.sha256("\n".join(rel_paths).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def memo_path(root: str | Path, dataset: str, key: str) -> Path:
    return Path(root) / "features" / dataset / f"{key}.safetensors"


def memo(
    cfg: dict[str, Any],
    clip: Any,
    dataset: str,
    rel_paths: list[str],
    compute: Callable[[], torch.Tensor],
) -> tuple[torch.Tensor, bool]:
    """(features N×E, hit): read the memoised features, or ``compute()`` them and write them atomically."""
    from safetensors.torch import load_file, save_file

    from promptbias.io import atomic_path

    key = memo_key(cfg, clip, dataset, rel_paths)
    if key is None:
        return compute(), False
    path = memo_path(cfg["data"]["root"], dataset, key)
    if path.is_file():
        feats = load_file(str(path))["features"]
        if feats.shape[0] == len(rel_paths):
            return feats, True
    feats = compute()
    with atomic_path(path, suffix=".safetensors") as tmp:  # parallel seeds: the last rename wins, same bytes
        save_file({"features": feats.contiguous()}, str(tmp))
    return feats, False
