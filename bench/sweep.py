"""The whole Table 1 workload, timed end to end through the real CLI (issue 8: < 30 min on one H100).

    .venv/bin/python bench/sweep.py --device cuda --out $OUT/sweep.md                 # full size, one GPU
    .venv/bin/python bench/sweep.py --device cuda --scale 0.05 --out $OUT/sweep.md    # a few minutes
    .venv/bin/python bench/sweep.py --scale 0.01 --epochs 1 --datasets eurosat,dtd --seeds 1    # CPU smoke
    .venv/bin/python bench/sweep.py --model promptbias-tiny --scale 0.02 --epochs 1   # CPU, fast check

Builds a throw-away workspace (``--workdir``, default a temp folder) holding the 11 datasets' class
counts and test-set sizes from the registry (CoOp splits), synthetic JPEGs (a pool of ``--pool`` distinct
images the split entries cycle through; class names from ImageNet's so token lengths are realistic), and a
params.yaml with random weights (``pretrained: null``). Then runs, per dataset, exactly the commands the
pipeline runs: ``promptbias split`` × seeds, ``promptbias cache``, ``promptbias train`` + ``evaluate`` for
prompt and bias × seeds, ``promptbias evaluate --method zeroshot`` × seeds, and reports wall time per
stage and dataset. ``--scale`` multiplies the shots (train steps) and test-set sizes (≥ 1 shot, ≥ 20
test images); ``--jobs N`` runs N commands at once (several processes share the GPU).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATASETS = [
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
]


def _classnames(n: int, offset: int) -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    names = list(IMAGENET_CLASSNAMES)
    return [
        names[(offset + i * max(1, len(names) // n)) % len(names)] + ("" if n <= 1000 else f" {i}")
        for i in range(n)
    ]


def build_workspace(ws: Path, datasets: list[str], args: argparse.Namespace) -> dict[str, dict[str, int]]:
    """Raw splits + a pool of synthetic JPEGs per dataset + params.yaml; returns sizes per dataset."""
    from promptbias.data import registry

    rng = np.random.default_rng(0)
    pool = []
    for _ in range(args.pool):
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        pool.append(Image.fromarray(small).resize((320, 240), Image.Resampling.BILINEAR))
    sizes = {}
    for k, name in enumerate(datasets):
        spec = registry.get(name)
        n_classes = spec.num_classes
        n_test = max(20, round(spec.sizes[2] * args.scale))
        shots = max(1, round(args.shots * args.scale)) if args.scale < 1 else args.shots
        folder = ws / "data" / "raw" / name
        (folder / "img").mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(pool):
            img.save(folder / "img" / f"{i:04d}.jpg", quality=85)
        names = _classnames(n_classes, k)

        def items(
            part: str, count: int, start: int, names=names, n_classes=n_classes, folder=folder
        ) -> list[list]:
            """One file per entry (a split names each image once): hard links into the pool."""
            (folder / "img" / part).mkdir(exist_ok=True)
            out = []
            for i in range(count):
                rel = f"img/{part}/{i:05d}.jpg"
                if not (folder / rel).exists():
                    os.link(folder / "img" / f"{(start + i) % args.pool:04d}.jpg", folder / rel)
                out.append([rel, i % n_classes, names[i % n_classes]])
            return out

        split = {
            "dataset": name,
            "classnames": names,
            "template": spec.template,
            "train": items("train", n_classes * shots, 0),
            "val": items("val", n_classes * min(shots, 4), 7),
            "test": items("test", n_test, 13),
        }
        (ws / "data" / "raw" / f"{name}.json").write_text(_json(split))
        sizes[name] = {"classes": n_classes, "shots": shots, "test": n_test}
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    base["model"].update({"name": args.model, "pretrained": None, "precision": "auto"})
    base["device"] = args.device
    base["data"].update({"root": "data", "shots": max(v["shots"] for v in sizes.values()), "num_workers": 8})
    base["train"]["epochs"] = args.epochs
    base["sweep"].update({"datasets": datasets, "seeds": args.seeds})
    if args.model != "ViT-B-16-quickgelu":  # small test models: shallower prompts/biases
        depth = 2
        base["methods"]["prompt"].update({"depth_text": depth, "depth_vision": depth})
        base["methods"]["bias"].update({"depth_text": depth, "depth_vision": depth})
    (ws / "params.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    return sizes


def _json(obj) -> str:
    import json

    return json.dumps(obj)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="ViT-B-16-quickgelu")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of shots and test images")
    ap.add_argument("--pool", type=int, default=64, help="distinct synthetic JPEGs per dataset")
    ap.add_argument("--jobs", type=int, default=1, help="commands run at once (share one GPU)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the workspace")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    datasets = [d for d in args.datasets.split(",") if d]

    ws = Path(args.workdir or tempfile.mkdtemp(prefix="promptbias-sweep-"))
    ws.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sizes = build_workspace(ws, datasets, args)
    t_build = time.perf_counter() - t0
    env = dict(os.environ)
    if args.device.startswith("cuda"):  # let several processes share the one GPU (no slot lock)
        env.setdefault("CUDA_VISIBLE_DEVICES", "0")
        env["PROMPTBIAS_GPU_SLOT"] = f"0:{env['CUDA_VISIBLE_DEVICES'].split(',')[0]}"
        env["CUDA_VISIBLE_DEVICES"] = env["CUDA_VISIBLE_DEVICES"].split(",")[0]
    times: dict[tuple[str, str], float] = {}
    failures: list[str] = []

    def cli(stage: str, dataset: str, *cmd: str) -> None:
        start = time.perf_counter()
        res = subprocess.run(
            [sys.executable, "-m", "promptbias.cli", "--params", "params.yaml", *cmd],
            cwd=ws,
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        times[(stage, dataset)] = times.get((stage, dataset), 0.0) + seconds
        if res.returncode != 0:
            failures.append(f"{' '.join(cmd)}: exit {res.returncode}: {res.stderr.strip()[-400:]}")
        print(f"{seconds:7.1f}s  promptbias {' '.join(cmd)}", flush=True)

    def prepare(ds: str) -> None:
        for s in args.seeds:
            cli("split", ds, "split", ds, "--shots", str(sizes[ds]["shots"]), "--seed", str(s))
        cli("cache", ds, "cache", ds)

    def chain(ds: str, method: str, seed: int) -> None:
        if method != "zeroshot":
            cli(f"train {method}", ds, "train", "--dataset", ds, "--method", method, "--seed", str(seed))
        cli(f"evaluate {method}", ds, "evaluate", "--dataset", ds, "--method", method, "--seed", str(seed))

    t_run = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        list(pool.map(prepare, datasets))
        jobs = [(d, m, s) for d in datasets for m in ("prompt", "bias", "zeroshot") for s in args.seeds]
        list(pool.map(lambda j: chain(*j), jobs))
    wall = time.perf_counter() - t_run

    stages = sorted({s for s, _ in times})
    lines = [
        f"# Table 1 sweep through the CLI — {args.device}, {args.model} (random weights)",
        "",
        f"- date {time.strftime('%Y-%m-%d %H:%M %Z')}; scale {args.scale}, epochs {args.epochs}, seeds {args.seeds}, "
        f"jobs {args.jobs}, {args.pool} distinct synthetic JPEGs per dataset",
        f"- **wall time {wall:.0f} s ({wall / 60:.1f} min)** for split + cache + train + evaluate "
        f"(workspace build {t_build:.0f} s not included)",
        f"- command-seconds summed: {sum(times.values()):.0f} s; failures: {len(failures)}",
        "",
        "| dataset | classes | shots | test | " + " | ".join(stages) + " |",
        "|---|---|---|---|" + "---|" * len(stages),
    ]
    for d in datasets:
        z = sizes[d]
        row = " | ".join(f"{times.get((s, d), 0.0):.0f}" for s in stages)
        lines.append(f"| {d} | {z['classes']} | {z['shots']} | {z['test']} | {row} |")
    totals = " | ".join(f"{sum(v for (s, _), v in times.items() if s == st):.0f}" for st in stages)
    lines.append(f"| **total (s)** | | | | {totals} |")
    lines += ["", *(f"- FAILED {f}" for f in failures)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    if not args.keep and args.workdir is None:
        shutil.rmtree(ws, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
