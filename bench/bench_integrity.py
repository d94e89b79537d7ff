"""What verifying the image cache's own bytes costs (issue 27): an ImageNet-sized cache, and a demo evaluate.

    .venv/bin/python bench/bench_integrity.py cache [--rows 10000] [--size 224] [--workers 2] [--dir /tmp]
    .venv/bin/python bench/bench_integrity.py evaluate --tree /tmp/before --tree . [--repeats 5]

``cache`` writes a synthetic uint8 cache of ``rows`` × 3×S×S (ImageNet's test split: 50,000 × 3×224×224
≈ 7.5 GB; the default 10,000 rows ≈ 1.5 GB, extrapolated linearly) with the digests ``images.build_cache``
records, then times, for all rows in batches of 5,000: (a) the read as 0faf963 did it (a memory-mapped
``np.load`` and fancy indexing, no check), (b) the verified read (``CachedImages.read_into``: every 32 MiB
block read once with ``os.preadv``, sha256-checked by a thread pool, then copied), each with the file in the
page cache ("warm") and evicted with ``posix_fadvise(DONTNEED)`` before the run ("cold"); plus the one-off
cost of the digests at build time. Best of ``--repeats``.

``evaluate`` builds the CI-sized demo (``params.yaml`` + ``config/demo.yaml`` + ``config/demo-fast.yaml``,
demo_shapes, seed 1: fetch, pretrain-demo, split, cache, train bias, one evaluate each) in a temp folder
for each ``--tree`` (a checkout whose sources are used; default this one), then runs ``promptbias evaluate``
for zeroshot and bias ``--repeats`` times, alternating between the trees so that each pair sees the same
machine load, and prints the median wall time (subprocesses: interpreter start and imports included).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _write_cache(root: Path, rows: int, size: int, workers: int) -> tuple[Path, float]:
    """A synthetic ``cache/bench/images_<size>.npy`` + sealed index; returns (npy, seconds of the digests)."""
    from promptbias import paths
    from promptbias.data import images

    npy, index = paths.cache_files(root, "bench", size)
    npy.parent.mkdir(parents=True, exist_ok=True)
    arr = np.lib.format.open_memmap(npy, mode="w+", dtype=np.uint8, shape=(rows, 3, size, size))
    pattern = np.random.default_rng(0).integers(0, 256, (256, 3, size, size), dtype=np.uint8)
    for i in range(0, rows, 256):
        arr[i : i + 256] = pattern[: min(256, rows - i)]
    arr.flush()
    del arr
    arr = np.load(npy, mmap_mode="r")
    t0 = time.perf_counter()
    record = images.npy_digests(npy, arr, workers)
    seconds = time.perf_counter() - t0
    rel = [f"images/{i:06d}.jpg" for i in range(rows)]
    images.write_cache_index(index, "bench", size, rel, ["0" * 64] * rows, [], record)
    return npy, seconds


def _evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _time_reads(root: Path, npy: Path, rows: int, size: int, workers: int, cold: bool, batch: int) -> tuple:
    from promptbias.data import images

    out = np.empty((min(batch, rows), 3, size, size), dtype=np.uint8)

    def unverified() -> None:  # 0faf963: np.load(mmap) + arr[rows]
        arr = np.load(npy, mmap_mode="r")
        for i in range(0, rows, batch):
            src = np.arange(i, min(rows, i + batch))
            out[: len(src)] = arr[src]

    def verified() -> None:
        hit = images._cache_lookup(root, "bench", size)
        assert hit is not None
        for i in range(0, rows, batch):
            src = list(range(i, min(rows, i + batch)))
            hit.read_into(out, list(range(len(src))), src, workers)

    times = []
    for fn in (unverified, verified):
        if cold:
            _evict(npy)
        else:
            fn()  # fill the page cache
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return tuple(times)


def bench_cache(args: argparse.Namespace) -> None:
    import hashlib

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        npy, digest_s = _write_cache(root, args.rows, args.size, args.workers)
        gb = npy.stat().st_size / 1e9
        buf = os.urandom(64 << 20)
        t0 = time.perf_counter()
        for _ in range(4):
            hashlib.sha256(buf).digest()
        sha_rate = 4 * 64 * (1 << 20) / 1e9 / (time.perf_counter() - t0)
        scale = 50_000 / args.rows
        print(
            f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        )
        print(
            f"cache: {args.rows} rows × 3×{args.size}×{args.size} = {gb:.2f} GB; sha256 {sha_rate:.2f} GB/s one thread"
        )
        print(
            f"digests at build ({args.workers} threads): {digest_s:.2f} s (ImageNet-sized: {digest_s * scale:.1f} s)"
        )
        for cold in (False, True):
            best = [min(ts) for ts in zip(*(_time_reads(root, npy, args.rows, args.size, args.workers, cold, 5000)
                                            for _ in range(args.repeats)), strict=True)]  # fmt: skip
            label = "cold" if cold else "warm"
            print(
                f"| {label} | {gb:.2f} GB | {best[0]:.2f} s ({gb / best[0]:.2f} GB/s) | {best[1]:.2f} s "
                f"({gb / best[1]:.2f} GB/s) | +{best[1] - best[0]:.2f} s | ImageNet 7.53 GB: {best[0] * scale:.1f} s "
                f"→ {best[1] * scale:.1f} s |"
            )


def _cli(tree: Path, ws: Path, *args: str) -> float:
    env = dict(os.environ, PYTHONPATH=f"{tree / 'src'}{os.pathsep}{tree}", OMP_NUM_THREADS="2")
    layers = ["--params", "params.yaml", "--params", "demo.yaml", "--params", "demo-fast.yaml"]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "promptbias.cli", *layers, *args], cwd=ws, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - t0


def _demo_workspace(tree: Path, ws: Path) -> None:
    """The CI-sized demo on demo_shapes, built with ``tree``'s sources: fetched, pretrained, split, cached,
    bias trained; each method evaluated once (the zero-shot memo is written here)."""
    import shutil

    import yaml

    ws.mkdir(parents=True)
    shutil.copy(tree / "params.yaml", ws / "params.yaml")
    shutil.copy(tree / "config/demo.yaml", ws / "demo.yaml")
    fast = yaml.safe_load((tree / "config/demo-fast.yaml").read_text())
    fast.setdefault("sweep", {})["datasets"] = ["demo_shapes"]
    (ws / "demo-fast.yaml").write_text(yaml.safe_dump(fast))
    setup = [["fetch", "demo_shapes"], ["pretrain-demo"], ["split", "demo_shapes", "--seed", "1"],
             ["cache", "demo_shapes"], ["train", "--dataset", "demo_shapes", "--method", "bias", "--seed", "1"],
             *(_evaluate(m) for m in METHODS)]  # fmt: skip
    for argv in setup:
        _cli(tree, ws, *argv)


METHODS = ("zeroshot", "bias")


def _evaluate(method: str) -> list[str]:
    return ["evaluate", "--dataset", "demo_shapes", "--method", method, "--seed", "1"]


def bench_evaluate(args: argparse.Namespace) -> None:
    """Every tree's workspace is built first, then the runs alternate between trees (same machine load)."""
    trees = [Path(t).resolve() for t in args.tree or [str(REPO)]]
    with tempfile.TemporaryDirectory() as tmp:
        spaces = [Path(tmp) / f"ws{i}" for i in range(len(trees))]
        for tree, ws in zip(trees, spaces, strict=True):
            _demo_workspace(tree, ws)
        times: dict[tuple[Path, str], list[float]] = {(t, m): [] for t in trees for m in METHODS}
        for _ in range(args.repeats):
            for method in METHODS:
                for tree, ws in zip(trees, spaces, strict=True):
                    times[tree, method].append(_cli(tree, ws, *_evaluate(method)))
        for (tree, method), ts in times.items():
            print(
                f"{tree}: evaluate {method}: median {statistics.median(ts):.2f} s of {[round(t, 2) for t in ts]}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    cache = sub.add_parser("cache")
    cache.add_argument("--rows", type=int, default=10_000)
    cache.add_argument("--size", type=int, default=224)
    cache.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    cache.add_argument("--repeats", type=int, default=2)
    cache.add_argument("--dir", default=None, help="where the temporary cache goes (default: $TMPDIR)")
    ev = sub.add_parser("evaluate")
    ev.add_argument(
        "--tree", action="append", help="a promptbias checkout to time (repeat it; default: this one)"
    )
    ev.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bench_cache(args) if args.what == "cache" else bench_evaluate(args)


if __name__ == "__main__":
    main()
