"""A demo job's wall time, cold and warm (issue 18): where the fixed cost goes and what the warm server saves.

    .venv/bin/python bench/bench_jobs.py                  # a CI-sized demo project in a temp folder
    .venv/bin/python bench/bench_jobs.py --project .      # a project where the demo DAG already ran

Needs a project where the demo's `metrics` target ran (the temp one is made with `snakemake metrics` on
config/demo.yaml + config/demo-fast.yaml; the demo CLIP's architecture is the full demo's). Then, on
demo_shapes / prompt / seed 1, it times (median of ``--repeats``, one run, one machine):

* ``python -c pass`` and the imports a job pays (``promptbias.cli`` + the stage modules);
* ``promptbias evaluate`` and ``promptbias train`` as fresh processes (cold) and handed to a warm server;
* a cProfile of the evaluate command run in-process after the imports: model build, weight load,
  tokenisation, images, writing outputs, and the rest (the work).

Prints markdown tables for bench/RESULTS.md. Fixed cost = a job's wall time minus its in-process work.
"""

from __future__ import annotations

import argparse
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = ["params.yaml", "config/demo.yaml", "config/demo-fast.yaml"]
EVALUATE = ["evaluate", "--dataset", "demo_shapes", "--method", "prompt", "--seed", "1"]
TRAIN = ["train", "--dataset", "demo_shapes", "--method", "prompt", "--seed", "1"]
IMPORTS = "import promptbias.cli, promptbias.train, promptbias.evaluate, promptbias.probes.commands"
# cProfile phases of an in-process evaluate: (label, function names whose cumulative time is that phase)
PHASES = [
    ("model build (open_clip.create_model, random init)", ("create_model",)),
    ("weight load (safetensors / state dict)", ("load_checkpoint", "load_file", "load_state_dict")),
    ("tokenisation", ("tokenize", "__call__@tokenizer.py")),
    ("images (cache read / decode)", ("load_eval_images", "load_cached", "read_cache")),
    ("writing outputs", ("write_json", "atomic_path")),
]


def _params() -> list[str]:
    return [a for f in FILES for a in ("--params", f)]


def _time(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _median(fn, repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def _project(path: str | None) -> Path:
    if path:
        return Path(path).resolve()
    proj = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    for name in ("Snakefile", "params.yaml", "config", "workflow"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, proj / name)
    subprocess.run(
        ["snakemake", "metrics", "--cores", "2", "--configfile", *FILES[1:], "--resources", "gpu=0", "-q"],
        cwd=proj,
        check=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
    )
    return proj


def _profile(proj: Path) -> tuple[float, dict[str, float]]:
    """In-process evaluate after the imports: its wall time and the cumulative time of each phase."""
    code = (
        f"import cProfile, os, sys; os.chdir({str(proj)!r}); {IMPORTS}\n"
        "from promptbias.cli import main\n"
        f"prof = cProfile.Profile(); prof.enable()\n"
        f"try:\n    main({_params() + EVALUATE!r})\nexcept SystemExit:\n    pass\n"
        f"prof.disable(); prof.dump_stats(sys.argv[1])\n"
    )
    out = Path(tempfile.mkdtemp()) / "evaluate.prof"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, stdout=subprocess.DEVNULL)
    stats = pstats.Stats(str(out))
    total = max(entry[3] for entry in stats.stats.values())  # the outermost call's cumulative time
    phases = {}
    for label, names in PHASES:
        best = 0.0
        for (filename, _, func), (_, _, _, cumulative, _) in stats.stats.items():
            for name in names:
                fn, _, file = name.partition("@")
                if func == fn and (not file or filename.endswith(file)):
                    best = max(best, cumulative)  # the outermost call of that name (no double counting)
        phases[label] = best
    return total, phases


def main() -> None:
    from promptbias import warm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    proj = _project(args.project)
    exe = str(Path(sys.executable).parent / "promptbias")
    cold_env = {**os.environ, warm.ENV: "off"}
    cmd = [exe, *_params()]

    interp = _median(lambda: _time([sys.executable, "-c", "pass"], proj, cold_env), args.repeats)
    imports = _median(lambda: _time([sys.executable, "-c", IMPORTS], proj, cold_env), args.repeats)
    cold = {
        n: _median(lambda a=a: _time(cmd + a, proj, cold_env), args.repeats)
        for n, a in (("evaluate", EVALUATE), ("train", TRAIN))
    }
    path, server = warm.start(owner=os.getpid())
    try:
        warm_env = {**os.environ, warm.ENV: path}
        _time(cmd + EVALUATE, proj, warm_env)  # the first job waits for the server's imports
        hot = {
            n: _median(lambda a=a: _time(cmd + a, proj, warm_env), args.repeats)
            for n, a in (("evaluate", EVALUATE), ("train", TRAIN))
        }
    finally:
        warm.stop(server)
    work, phases = _profile(proj)

    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads per job: config "
        f"(cpu_threads); median of {args.repeats}; project {proj}\n"
    )
    print("| demo_shapes / prompt / seed 1 | cold (fresh process) | warm (forked child) | cold / warm |")
    print("|---|---:|---:|---:|")
    for name in ("evaluate", "train"):
        print(
            f"| `promptbias {name}` wall | {cold[name]:.2f} s | {hot[name]:.2f} s | {cold[name] / hot[name]:.1f}× |"
        )
    print(
        f"| fixed cost of evaluate (wall − in-process work {work:.2f} s) | {cold['evaluate'] - work:.2f} s | "
        f"{max(hot['evaluate'] - work, 0.0):.2f} s | |"
    )
    print("\n| where a cold evaluate's time goes | seconds |\n|---|---:|")
    print(f"| interpreter start (`python -c pass`) | {interp:.2f} |")
    print(f"| imports (torch, open_clip, the stages) | {imports - interp:.2f} |")
    for label, seconds in phases.items():
        print(f"| {label} | {seconds:.2f} |")
    print(f"| the rest of the command (features, prediction, metrics) | {work - sum(phases.values()):.2f} |")


if __name__ == "__main__":
    main()
