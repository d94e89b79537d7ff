"""Probe cost per image: every registered probe on random images through a random-init backbone.

    python bench/bench_probes.py --model promptbias-tiny --images 32 --batch-size 16
    python bench/bench_probes.py --model ViT-B-16-quickgelu --images 4 --batch-size 4 --threads 1

Prints one markdown table row per probe (ms/image, wall seconds) for a deep-prompt method (1 text +
1 vision token in every layer, as Table 1's PROMPT) over ``--classes`` class captions. Text-side work
(attention_stats, attention_entropy, bias_decomposition) scales with the number of classes, not images.
"""

from __future__ import annotations

import argparse
import logging
import platform
import time

import torch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="promptbias-tiny")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = leave as is)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)

    from promptbias.methods import build_method
    from promptbias.model import load_clip
    from promptbias.probes import PROBES, ProbeContext, ProbeSettings, run_probe

    torch.manual_seed(0)
    clip = load_clip(args.model, None, device=args.device)
    names = [f"class number {i}" for i in range(args.classes)]
    layers_v = len(clip.model.visual.transformer.resblocks)
    layers_t = len(clip.model.transformer.resblocks)
    method = build_method(
        "prompt",
        clip,
        names,
        "a photo of a {}.",
        n_ctx_text=1,
        n_ctx_vision=1,
        depth_text=layers_t,
        depth_vision=layers_v,
    )
    g = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (args.images, 3, clip.image_size, clip.image_size), dtype=torch.uint8, generator=g
    )
    labels = torch.arange(args.images) % args.classes
    settings = ProbeSettings(
        batch_size=args.batch_size, map_images=min(4, args.images), rotations=(0, 90, 180, 270)
    )
    ctx = ProbeContext(clip, method, images, labels, [str(i) for i in range(args.images)], settings)
    run_probe(
        "attention_stats", ProbeContext(clip, method, images[:1], labels[:1], ["0"], settings)
    )  # warm-up
    print(
        f"# {args.model} on {args.device} ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads), {args.images} images, batch {args.batch_size}, {args.classes} classes"
    )
    print("| probe | ms/image | wall s |")
    print("|---|---:|---:|")
    for kind in sorted(PROBES):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        run_probe(kind, ctx)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        n = settings.map_images if kind == "maps" else args.images
        note = f" (per map image, {len(settings.rotations)} rotations)" if kind == "maps" else ""
        print(f"| {kind}{note} | {1000 * dt / n:.1f} | {dt:.2f} |")


if __name__ == "__main__":
    main()
