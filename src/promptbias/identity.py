"""Content identity of what a job reads: digests of files, images, backbone weights and code.

    identity.sha256_file("data/raw/dtd.json")              # hex digest of the file's bytes
    identity.sha256_files(folder, rel_paths)               # one digest per file (threads)
    identity.backbone({"name": ..., "pretrained": ...})    # the weights' sha256 when they are a file
    identity.code()                                        # promptbias version + digest of its sources
    identity.digest({"any": "json"})                       # short digest of canonical JSON
    identity.differences(a, b)                             # ["inputs.fewshot_split", ...] (dotted keys)

Every memo, cache and checkpoint of promptbias is keyed on these, never on paths or mtimes: a file
replaced at the same path with other bytes is a different input. Torch-free.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from promptbias.errors import UserError


def sha256_file(path: str | os.PathLike, missing: str = "missing — run the stage that writes it") -> str:
    """The sha256 of a file's bytes (hex); a missing file is the UserError ``<path>: <missing>``."""
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except FileNotFoundError:
        raise UserError(f"{path}: {missing}") from None


def sha256_files(
    folder: str | os.PathLike, rel_paths: Sequence[str], workers: int | None = None
) -> list[str]:
    """The sha256 of every ``folder/rel`` (threads: hashlib releases the GIL on large reads)."""
    folder = Path(folder)
    workers = max(1, workers if workers is not None else min(8, os.cpu_count() or 1))

    def one(rel: str) -> str:
        return sha256_file(folder / rel, missing="image file missing — re-fetch the dataset")

    from promptbias.progress import track

    def shown(digests: Iterable[str]) -> list[str]:  # a bar/log lines for a whole dataset, not a few-shot set
        return list(track(digests, total=len(rel_paths), desc=f"sha256 {folder.name}", unit="file",
                          enabled=len(rel_paths) >= 1000))  # fmt: skip

    if workers == 1 or len(rel_paths) < 64:
        return shown(one(rel) for rel in rel_paths)
    with ThreadPoolExecutor(workers) as pool:
        return shown(pool.map(one, rel_paths))


def digest(obj: Any, length: int = 16) -> str:
    """A short sha256 of ``obj`` as canonical JSON (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def listing_digest(rel_paths: Sequence[str], file_digests: Sequence[str]) -> str:
    """One digest of an ordered list of files and their contents."""
    h = hashlib.sha256()
    for rel, d in zip(rel_paths, file_digests, strict=True):
        h.update(f"{rel}\0{d}\n".encode())
    return h.hexdigest()


@functools.cache
def _weights_sha256(path: str, stat_key: tuple[int, int, int, int]) -> str:
    return sha256_file(path)


def weights_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a weights file, computed once per process and file version."""
    st = os.stat(path)
    return _weights_sha256(str(Path(path).resolve()), (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))


def backbone(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """What identifies the frozen CLIP: its name and the weights' content (or the open_clip tag)."""
    pretrained = model_cfg.get("pretrained")
    out: dict[str, Any] = {"name": model_cfg["name"], "pretrained": pretrained}
    if pretrained and Path(str(pretrained)).is_file():
        out["sha256"] = weights_sha256(pretrained)
    return out


@functools.cache
def code() -> dict[str, str]:
    """The promptbias version and a digest of the package's sources (code changes change results)."""
    h = hashlib.sha256()
    root = resources.files("promptbias")
    for path in sorted(_source_files(Path(str(root))), key=lambda p: p.as_posix()):
        h.update(path.relative_to(Path(str(root))).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    try:
        version = metadata.version("promptbias")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        version = "unknown"
    return {"promptbias": version, "sources": h.hexdigest()[:16]}


def _source_files(root: Path) -> list[Path]:
    return [
        p
        for p in root.rglob("*")
        if p.suffix in (".py", ".json", ".yaml", ".txt") and "__pycache__" not in p.parts
    ]


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys at which two JSON-like values differ (the whole value when not both mappings)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in a or key not in b:
                out.append(path)
            else:
                out += differences(a[key], b[key], path)
        return out
    return [] if a == b else [prefix or "<value>"]
