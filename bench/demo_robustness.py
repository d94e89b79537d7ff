"""Is the demo's Table 1 robust? The demo sweep over world/pretraining seeds × CPU threads (issue 15).

    .venv/bin/python bench/demo_robustness.py                       # seeds 0 1 2 × threads 1 2 (~30 min, 2 cores)
    .venv/bin/python bench/demo_robustness.py --seeds 0 --threads 1 --out /tmp/robust

For each (seed, threads) it copies the workflow into ``--out/s<seed>-t<threads>/`` and runs
``snakemake metrics`` on config/demo.yaml with ``demo.world_seed = demo.pretrain_seed = seed`` and
``cpu_threads = demo.pretrain_threads = threads`` (a float-order change: other bits, the same science if
the demo is robust) and the sensitivity grid off (it feeds only the OPTIMAL column). Then it prints, per run,
Table 1 (mean ± std over the sweep's training seeds) and the margin of each tuned method over zero-shot in
units of its seed spread, with issue 15's verdict (✓ = the margin is more than twice the spread), and over
all runs the mean ± spread of every cell: the tables for bench/RESULTS.md. A run that exists is reused.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("zeroshot", "prompt", "bias")


def _run(out: Path, seed: int, threads: int) -> dict:
    proj = out / f"s{seed}-t{threads}"
    summary = proj / "metrics/summary.json"
    if not summary.is_file():
        proj.mkdir(parents=True, exist_ok=True)
        for name in ("Snakefile", "params.yaml", "config", "workflow"):
            src, dst = REPO / name, proj / name
            if not dst.exists():
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
        (proj / "robust.yaml").write_text(
            f"cpu_threads: {threads}\ndemo:\n  world_seed: {seed}\n  pretrain_seed: {seed}\n"
            f"  pretrain_threads: {threads}\nsensitivity:\n  enabled: false\n"
        )
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        subprocess.run(
            ["snakemake", "metrics", "--cores", "2", "--configfile", "config/demo.yaml", "robust.yaml",
             "--resources", "gpu=0", "-q", "--rerun-incomplete"],
            cwd=proj, env=env, check=True,
        )  # fmt: skip
    return json.loads(summary.read_text())["runs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=Path("/tmp/promptbias-robustness"))
    args = parser.parse_args()
    runs = {(s, t): _run(args.out, s, t) for s, t in itertools.product(args.seeds, args.threads)}
    datasets = sorted({key.split("/")[0] for r in runs.values() for key in r})
    print(
        "| world/pretrain seed | threads | dataset | zero-shot | PROMPT | BIAS | PROMPT − ZS (× spread) | BIAS − ZS (× spread) |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    cells: dict[tuple[str, str], list[float]] = {}
    passed = checked = 0
    for (s, t), r in runs.items():
        for d in datasets:
            e = {m: r[f"{d}/{m}"] for m in METHODS}
            zs = e["zeroshot"]["accuracy_mean"]
            row = [f"{e['zeroshot']['accuracy_mean']:.2f}"]
            margins = []
            for m in METHODS:
                cells.setdefault((d, m), []).append(e[m]["accuracy_mean"])
                if m != "zeroshot":
                    row.append(f"{e[m]['accuracy_mean']:.2f} ± {e[m]['accuracy_std']:.2f}")
                    gap, spread = e[m]["accuracy_mean"] - zs, e[m]["accuracy_std"]
                    holds = gap > 2 * spread
                    passed += holds
                    checked += 1
                    ratio = f"{gap / spread:.1f}×" if spread else "∞"
                    margins.append(f"{gap:+.2f} ({ratio}) {'✓' if holds else '✗'}")
            print(f"| {s} | {t} | {d} | {' | '.join(row)} | {' | '.join(margins)} |")
    print(f"\nmargin > 2 × seed spread in {passed} of {checked} (run, dataset, tuned method) cells")
    print("\n| dataset | method | mean over runs | spread (min–max) |\n|---|---|---:|---:|")
    for (d, m), values in sorted(cells.items()):
        print(f"| {d} | {m} | {statistics.mean(values):.2f} | {min(values):.2f}–{max(values):.2f} |")


if __name__ == "__main__":
    main()
