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
a throw-away cache outside DVC's outputs: deleting it only costs the recomputation.
"""

from __future__ import annotations

from collections.abc import Callable
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
    """(features N×E, hit): read the memoised features, or ``compute()`` them and write them atomically."""
    from safetensors.torch import load_file, save_file

    from promptbias.io import atomic_path

    key = memo_key(cfg, clip, dataset, rel_paths)
    if key is None:
        return compute(), False
    path = paths.features_file(cfg["data"]["root"], dataset, key)
    if path.is_file():
        feats = load_file(str(path))["features"]
        if feats.shape[0] == len(rel_paths):
            return feats, True
    feats = compute()
    with atomic_path(path, suffix=".safetensors") as tmp:  # parallel seeds: the last rename wins, same bytes
        save_file({"features": feats.contiguous()}, str(tmp))
    return feats, False
