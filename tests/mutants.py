"""Plant realistic one-line bugs, one at a time, and check that the tests meant to guard them fail.

    make mutants                                  # every mutant, 2 at a time, markdown table on stdout
    .venv/bin/python tests/mutants.py -k warmup   # the mutants whose id contains "warmup"
    .venv/bin/python tests/mutants.py -x cluster  # all but the mutant checked on the real SLURM
    .venv/bin/python tests/mutants.py --list      # ids, areas and the tests each one runs

Each mutant is applied to a scratch copy of the working tree (the files ``git ls-files`` lists, tracked or
new) and the tests named for it run there with ``PYTHONPATH=<copy>/src``, so ``import promptbias`` and
the ``promptbias`` command of every subprocess load the mutated code. A mutant is *caught* when pytest
reports a failing test (exit status 1), *survived* when the tests pass, and an *error* otherwise
(collection or usage error: the table says so; it counts as not caught). ``--baseline`` first runs
each distinct test selection on the unmutated copy, which must pass.

The list is curated (mutmut's blind operator swaps would spend the budget on equivalent mutants and
on the slow end-to-end tests); every entry is a bug somebody could plausibly write, in model, methods,
train, evaluate, splits, probes, pipeline or the run driver. Not run in CI: ``make mutants`` takes
about ten minutes on two cores.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    id: str
    area: str
    bug: str
    file: str  # relative to the repository root
    edits: tuple[tuple[str, str], ...]  # (exact old text, new text); each old text occurs exactly once
    tests: tuple[str, ...]  # pytest arguments (paths, -k expressions)


def _m(id: str, area: str, bug: str, file: str, old: str, new: str, *tests: str) -> Mutant:
    return Mutant(id, area, bug, file, ((old, new),), tests)


MUTANTS: tuple[Mutant, ...] = (
    _m(
        "warmup-lr",
        "train",
        "the warm-up epoch runs at the full learning rate (train.json still says 1e-5)",
        "src/promptbias/train.py",
        'group["lr"] = lr',
        'group["lr"] = schedule(epoch + 1)',
        "tests/test_training_dynamics.py",
    ),
    _m(
        "weight-decay",
        "train",
        "SGD without weight decay",
        "src/promptbias/train.py",
        "weight_decay=s.train.weight_decay,",
        "weight_decay=0.0,",
        "tests/test_training_dynamics.py",
    ),
    _m(
        "drop-last",
        "train",
        "the last partial batch is kept (one more step per epoch)",
        "src/promptbias/train.py",
        "return self.n // self.batch_size if self.n >= self.batch_size else",
        "return math.ceil(self.n / self.batch_size) if self.n >= self.batch_size else",
        "tests/test_training_dynamics.py",
    ),
    _m(
        "epoch-shuffle",
        "train",
        "every epoch draws the same order and augmentation",
        "src/promptbias/train.py",
        "seed * 1_000_003 + epoch",
        "seed * 1_000_003",
        "tests/test_train_evaluate.py",
    ),
    _m(
        "resume-optimizer",
        "train",
        "resume restores the tensors but not the optimizer's momentum",
        "src/promptbias/train.py",
        'optimizer.load_state_dict(state["optimizer"])',
        "pass",
        "tests/test_train_evaluate.py",
        "-k",
        "kill",
    ),
    _m(
        "text-constant",
        "methods",
        "text-side learnables never train (text_is_constant forced true)",
        "src/promptbias/methods/base.py",
        "return not any(t is not None for t in (*self.text_prompts(), *self.text_biases()))",
        "return True",
        "tests/test_training_dynamics.py",
    ),
    _m(
        "bias-init",
        "methods",
        "vision biases start N(0, 0.02²) like the prompts (step 0 is no longer zero-shot CLIP)",
        "src/promptbias/methods/bias.py",
        "nn.Parameter(torch.zeros(self.vision_width))",
        "nn.Parameter(torch.randn(self.vision_width) * 0.02)",
        "tests/test_methods.py",
    ),
    Mutant(
        "vision-bias-before",
        "model",
        "the vision bias is added before each block instead of after",
        "src/promptbias/model/encoders.py",
        (
            (
                "        if cls_only and layer == len(blocks) - 1:\n",
                "        b = _layer(biases, layer)\n        if b is not None:\n            x = x + b.to(x.dtype)\n"
                "        if cls_only and layer == len(blocks) - 1:\n",
            ),
            (
                "            x = _run(blk, x, False, attention, recorder)\n"
                "        b = _layer(biases, layer)\n        if b is not None:\n            x = x + b.to(x.dtype)\n",
                "            x = _run(blk, x, False, attention, recorder)\n",
            ),
        ),
        ("tests/test_methods.py", "tests/test_model_encoders.py", "tests/test_training_dynamics.py"),
    ),
    _m(
        "vision-prompt-late",
        "model",
        "vision deep prompts start one block late",
        "src/promptbias/model/encoders.py",
        "        p = _layer(prompts, layer)\n        if p is not None:\n            if layer == 0:",
        "        p = _layer(prompts, layer - 1) if layer > 0 else None\n        if p is not None:\n            if layer == 0:",
        "tests/test_methods.py",
        "tests/test_model_encoders.py",
        "tests/test_training_dynamics.py",
    ),
    _m(
        "text-prompt-no-pos",
        "model",
        "the first text prompt misses its positional embedding (fast text path)",
        "src/promptbias/model/fasttext.py",
        "            pre = _replace_context(pre, p0, n_ctx)\n        pre = pre + pos[:P].to(cast)\n",
        "            pass\n        pre = pre + pos[:P].to(cast)\n        if p0 is not None:\n"
        "            pre = _replace_context(pre, p0, n_ctx)\n",
        "tests/test_perf_exactness.py",
        "tests/test_training_dynamics.py",
    ),
    Mutant(
        "micro-macro",
        "evaluate",
        "micro and macro accuracy swapped",
        "src/promptbias/evaluate.py",
        (
            ('"accuracy": 100.0 * float(correct.mean())', '"macro_accuracy": 100.0 * float(correct.mean())'),
            (
                '"macro_accuracy": float(per_class[present].mean())',
                '"accuracy": float(per_class[present].mean())',
            ),
        ),
        ("tests/test_train_evaluate.py",),
    ),
    _m(
        "select-on-test",
        "evaluate",
        "the optimal prompt configuration is chosen on test accuracy",
        "src/promptbias/aggregate.py",
        'e.get("val_accuracy_mean", float("-inf"))',
        'e["accuracy_mean"]',
        "tests/test_train_evaluate.py",
    ),
    _m(
        "fewshot-seed",
        "splits",
        "the few-shot sampler is seeded with seed+1",
        "src/promptbias/data/splits.py",
        "rng = random.Random(seed)",
        "rng = random.Random(seed + 1)",
        "tests/test_data_splits.py",
    ),
    _m(
        "cache-unverified",
        "data",
        "the image cache is read without checking the source images' sha256",
        "src/promptbias/data/images.py",
        "if recorded[row] != d]",
        "if False]",
        "tests/test_data_images.py",
        "tests/test_provenance.py",
        "-k",
        "cache or image",
    ),
    _m(
        "relevancy-clamp",
        "probes",
        "relevancy heads averaged without clamp(min=0)",
        "src/promptbias/probes/relevancy.py",
        "return (grads * probs).clamp(min=0).mean(dim=1)",
        "return (grads * probs).mean(dim=1)",
        "tests/test_probes_math.py",
        "tests/test_probes_equivalence.py",
    ),
    _m(
        "entropy-renormalise",
        "probes",
        "W/O-prompt entropy without renormalising the remaining keys",
        "src/promptbias/probes/attention_entropy.py",
        "        p = p / p.sum(-1, keepdim=True).clamp_min(EPS)\n",
        "",
        "tests/test_probes_math.py",
    ),
    _m(
        "distance-manhattan",
        "probes",
        "attention distance measured in city blocks, not Euclidean pixels",
        "src/promptbias/probes/attention_distance.py",
        "torch.sqrt((r[:, None] - r[None, :]) ** 2 + (c[:, None] - c[None, :]) ** 2)",
        "(r[:, None] - r[None, :]).abs() + (c[:, None] - c[None, :]).abs()",
        "tests/test_probes_math.py",
    ),
    _m(
        "checkpoint-identity",
        "train",
        "resume ignores the checkpoint's identity (other settings resume)",
        "src/promptbias/checkpoint.py",
        "if saved != self.identity:",
        "if saved is None:",
        "tests/test_provenance.py",
        "-k",
        "checkpoint",
    ),
    _m(
        "checkpoint-kept",
        "train",
        "the checkpoint stays after the job finished (a forced rerun resumes)",
        "src/promptbias/train.py",
        "checkpoint.remove()  # done",
        "pass  # done",
        "tests/test_provenance.py",
        "-k",
        "checkpoint",
    ),
    _m(
        "untracked-key",
        "pipeline",
        "the train stage stops tracking train.weight_decay",
        "src/promptbias/pipeline/spec.py",
        '("epochs", "batch_size", "momentum", "weight_decay", "warmup_epochs"',
        '("epochs", "batch_size", "momentum", "warmup_epochs"',
        "tests/test_pipeline.py",
        "-k",
        "tracks_every_key",
    ),
    _m(
        "slurm-gpu-under-cpu",
        "pipeline",
        "SLURM jobs of GPU stages ask for a GPU under device: cpu",
        "src/promptbias/pipeline/snakemake.py",
        'gpu = int(stage.gpu and cfg["device"] != "cpu")',
        "gpu = int(stage.gpu)",
        "tests/test_pipeline.py",
        "-k",
        "slurm",
    ),
    _m(
        "slurm-gpu-on-cluster",
        "pipeline",
        "the same bug, on the real one-node SLURM of tests/cluster (needs root; ~5 min)",
        "src/promptbias/pipeline/snakemake.py",
        'gpu = int(stage.gpu and cfg["device"] != "cpu")',
        "gpu = int(stage.gpu)",
        "tests/cluster",
        "-k",
        "demo_dag",
    ),
    _m(
        "driver-frontier",
        "run driver",
        "the driver runs stale stages whose upstream is still stale",
        "src/promptbias/runner.py",
        "if name in stale and not (ancestors(name) & stale)]",
        "if name in stale]",
        "tests/test_runner.py",
    ),
    _m(
        "driver-records",
        "run driver",
        "the driver commits a job whose record states other params",
        "src/promptbias/runner.py",
        "if stated != want:",
        "if stated is None:",
        "tests/test_runner.py",
    ),
)


def scratch_copy(dest: Path) -> None:
    """The working tree's files (tracked, and new ones git does not ignore) copied to ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def apply(mutant: Mutant, root: Path) -> None:
    path = root / mutant.file
    text = path.read_text()
    for old, new in mutant.edits:
        if text.count(old) != 1:
            raise SystemExit(f"mutant {mutant.id}: {mutant.file} holds {text.count(old)} copies of {old!r}")
        text = text.replace(old, new)
    path.write_text(text)


def run_tests(root: Path, tests: tuple[str, ...]) -> tuple[int, str, float]:
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    argv = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not gpu", *tests]
    t0 = time.monotonic()
    res = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True)
    return res.returncode, res.stdout + res.stderr, time.monotonic() - t0


def check(mutant: Mutant | None, tests: tuple[str, ...]) -> dict:
    with tempfile.TemporaryDirectory(prefix="promptbias-mutant-") as tmp:
        root = Path(tmp)
        scratch_copy(root)
        if mutant is not None:
            apply(mutant, root)
        code, out, seconds = run_tests(root, tests)
    failed = re.findall(r"^FAILED (\S+)", out, flags=re.M)
    verdict = {0: "survived", 1: "caught"}.get(code, f"error (pytest exit {code})")
    return {"verdict": verdict, "by": failed[0] if failed else "", "seconds": seconds, "output": out}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", dest="select", default="", help="only mutants whose id contains this")
    parser.add_argument("-x", dest="exclude", default=None, help="leave out mutants whose id contains this")
    parser.add_argument("-j", dest="jobs", type=int, default=2, help="mutants checked at a time")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--baseline", action="store_true", help="first run each test selection unmutated")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if args.select in m.id and not (args.exclude and args.exclude in m.id)]
    if args.list:
        for m in chosen:
            print(f"{m.id:22} {m.area:11} {m.bug}  [{' '.join(m.tests)}]")
        return 0
    if args.baseline:
        for tests in dict.fromkeys(m.tests for m in chosen):
            base = check(None, tests)
            if base["verdict"] != "survived":
                print(base["output"][-3000:], file=sys.stderr)
                raise SystemExit(f"baseline {' '.join(tests)}: {base['verdict']} — fix the tests first")
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda m: check(m, m.tests), chosen))
    print("| mutant | area | planted bug | result | first failing test | s |")
    print("|---|---|---|---|---|---|")
    for m, r in zip(chosen, results, strict=True):
        by = r["by"].replace("tests/", "")
        print(f"| {m.id} | {m.area} | {m.bug} | **{r['verdict']}** | {by} | {r['seconds']:.0f} |")
    caught = sum(r["verdict"] == "caught" for r in results)
    print(f"\n{caught}/{len(results)} caught in {time.monotonic() - t0:.0f} s (-j {args.jobs})")
    for m, r in zip(chosen, results, strict=True):
        if r["verdict"].startswith("error"):
            print(f"\n--- {m.id}: {r['verdict']}\n{r['output'][-1500:]}", file=sys.stderr)
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
