"""Evaluation-loading throughput with and without the decoded-image cache.

    .venv/bin/python bench/bench_loading.py [--n 200] [--width 500] [--height 375] [--size 224] [--workers 2]
    .venv/bin/python bench/bench_loading.py --augment cuda     # TrainAugment batches/s instead

Writes ``n`` synthetic JPEGs (smooth noise, quality 90, at a typical dataset resolution) into a temp
folder laid out like ``data/raw/<ds>/``, then times ``images.load_eval_images`` (decode + bicubic resize
+ center crop, threaded) against the same call served from the memory-mapped cache built by
``images.build_cache``, and prints one markdown table row (cache build time included for reference).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from promptbias.data import images


def _make_dataset(root: Path, n: int, width: int, height: int) -> list[list]:
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        small = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
        rel = f"images/c{i % 10}/{i:05d}.jpg"
        path = root / "raw" / "bench" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, quality=90)
        items.append([rel, i % 10, f"c{i % 10}"])
    return items


def _best_of(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_augment(device: str, size: int, width: int, height: int, batch: int = 32, steps: int = 20) -> None:
    """TrainAugment throughput (images/s) on ``device`` for decoded uint8 images held on the CPU."""
    import torch

    gen = torch.Generator(device=device).manual_seed(0)
    imgs = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8) for _ in range(batch)]
    aug = images.TrainAugment(size)
    out = aug(imgs, gen)  # warm-up
    assert out.shape == (batch, 3, size, size) and out.device.type == torch.device(device).type
    again = aug(imgs, torch.Generator(device=device).manual_seed(0))
    assert torch.equal(aug(imgs, torch.Generator(device=device).manual_seed(0)), again), "not deterministic"
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        x = images.normalize(aug(imgs, gen), (0.48, 0.46, 0.41), (0.27, 0.26, 0.28))
    sync()
    elapsed = time.perf_counter() - start
    print("| device | batch | source | out | augment+normalize img/s |")
    print("|---|---|---|---|---|")
    print(f"| {device} | {batch} | {width}×{height} uint8 | {size} | {steps * batch / elapsed:.0f} |")
    del x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--augment", metavar="DEVICE", default=None, help="Benchmark TrainAugment on DEVICE.")
    args = parser.parse_args()
    if args.augment:
        bench_augment(args.augment, args.size, args.width, args.height)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        items = _make_dataset(root, args.n, args.width, args.height)
        uncached = _best_of(
            lambda: images.load_eval_images(
                root, "bench", items, args.size, cache=False, num_workers=args.workers
            ),
            args.repeats,
        )
        start = time.perf_counter()
        images.build_cache(root, "bench", items, args.size, num_workers=args.workers)
        build = time.perf_counter() - start
        cached = _best_of(lambda: images.load_eval_images(root, "bench", items, args.size), args.repeats)
        a, _ = images.load_eval_images(root, "bench", items, args.size, cache=False, num_workers=args.workers)
        b, _ = images.load_eval_images(root, "bench", items, args.size)
        assert bool((a == b).all()), "cache is not bit-exact"
    print(
        "| machine | images | source | out | workers | uncached img/s | cache build s | cached img/s | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {platform.processor() or platform.machine()} | {args.n} | {args.width}×{args.height} JPEG | "
        f"{args.size} | {args.workers} | {args.n / uncached:.0f} | {build:.2f} | {args.n / cached:.0f} | "
        f"{uncached / cached:.0f}× |"
    )


if __name__ == "__main__":
    main()
