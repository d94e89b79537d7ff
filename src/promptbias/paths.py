"""Every on-disk path of promptbias, in one torch-free module: stages, engines and renderers ask it.

    from promptbias import paths
    paths.raw_json("data", "dtd")                      # data/raw/dtd.json (the normalised split)
    paths.split_json("data", "dtd", 16, 1)             # data/splits/dtd/shot16_seed1.json
    paths.run_file("dtd", "prompt", 1, paths.PARAMS)   # runs/dtd/prompt/seed1/params.safetensors
    paths.metrics_json("dtd", "prompt", 1)             # metrics/dtd/prompt/seed1.json
    paths.probe_file("dtd", "prompt", 1, "maps", "npz")  # probes/dtd/prompt/seed1/maps.npz

The engines' wildcard templates come from the same functions called with placeholders, e.g.
``paths.run_file("{dataset}", "{method}", "{seed}", paths.PARAMS)``. Data paths live under
``data.root`` (first argument); runs, metrics, probes, results and logs are relative to the working
directory (the repository root), the same for Snakemake and DVC.
"""

from __future__ import annotations

from pathlib import Path

RUNS = Path("runs")
METRICS = Path("metrics")
PROBES = Path("probes")
RESULTS = Path("results")
FIGURES = RESULTS / "figures"
TABLES = RESULTS / "tables"
REPORT = RESULTS / "report.html"
LOGS = Path("logs")
DVC_YAML = Path("dvc.yaml")

# files of a run folder
PARAMS = "params.safetensors"  # the learned tensors (a DVC output)
TRAIN_RECORD = "train.json"  # history, settings, identity, provenance (a DVC output)
CHECKPOINT = "checkpoint.pt"  # resume state while a job runs; removed when it ends
LIVE_DIR = "dvclive"  # DVCLive's per-epoch logs
CURVE = "curve.csv"  # epoch, lr, loss, train accuracy — a DVC plot (dvc plots show / diff)

# files of the demo CLIP folder (demo.clip_dir)
DEMO_WEIGHTS = "open_clip_model.safetensors"
DEMO_RECORD = "pretrain.json"


# ------------------------------------------------------------------------------------- data.root
def raw_dir(root: str | Path, dataset: str) -> Path:
    """The dataset's files in its CoOp layout (written or linked by ``fetch``)."""
    return Path(root) / "raw" / dataset


def raw_json(root: str | Path, dataset: str) -> Path:
    """The normalised split (train/val/test lists), written last by ``fetch``."""
    return Path(root) / "raw" / f"{dataset}.json"


def split_json(root: str | Path, dataset: str, shots: int | str, seed: int | str) -> Path:
    return Path(root) / "splits" / dataset / f"shot{shots}_seed{seed}.json"


def cache_dir(root: str | Path, dataset: str) -> Path:
    return Path(root) / "cache" / dataset


def cache_files(root: str | Path, dataset: str, size: int) -> tuple[Path, Path]:
    """The uint8 image array and its index (written last) of the test-transform cache."""
    folder = cache_dir(root, dataset)
    return folder / f"images_{size}.npy", folder / f"images_{size}.json"


def features_file(root: str | Path, dataset: str, key: str) -> Path:
    """A memoised frozen-feature file (a throw-away cache outside DVC's outputs)."""
    return Path(root) / "features" / dataset / f"{key}.safetensors"


# ------------------------------------------------------------------------------------------ runs
def run_dir(dataset: str, method: str, seed: int | str) -> Path:
    return RUNS / dataset / method / f"seed{seed}"


def run_file(dataset: str, method: str, seed: int | str, name: str) -> Path:
    return run_dir(dataset, method, seed) / name


def demo_weights(clip_dir: str | Path) -> Path:
    return Path(clip_dir) / DEMO_WEIGHTS


def demo_record(clip_dir: str | Path) -> Path:
    return Path(clip_dir) / DEMO_RECORD


# --------------------------------------------------------------------------------------- metrics
def metrics_json(dataset: str, method: str, seed: int | str) -> Path:
    """One evaluation's results (in git; the DVC metric is the per-method summary below)."""
    return METRICS / dataset / method / f"seed{seed}.json"


def method_metrics_json(dataset: str, method: str) -> Path:
    """One dataset × method over seeds: a DVC metric, one short row of `dvc metrics show`."""
    return METRICS / dataset / f"{method}.json"


def per_class_json(dataset: str, method: str, seed: int | str) -> Path:
    """Per-class accuracy and the evaluation's record, beside its metrics file."""
    return METRICS / dataset / method / f"seed{seed}.per_class.json"


SUMMARY_JSON = METRICS / "summary.json"
SUMMARY_CSV = TABLES / "summary.csv"


# ---------------------------------------------------------------------------------------- probes
def probe_dir(dataset: str, method: str, seed: int | str) -> Path:
    return PROBES / dataset / method / f"seed{seed}"


def probe_file(dataset: str, method: str, seed: int | str, kind: str, suffix: str) -> Path:
    """``<kind>.parquet`` (the tidy table), ``<kind>.json`` (the sidecar) or ``<kind>.npz`` (arrays)."""
    return probe_dir(dataset, method, seed) / f"{kind}.{suffix}"


# --------------------------------------------------------------------------------------- results
def table_file(name: str) -> Path:
    return TABLES / name


def figure_file(stem: str, fmt: str) -> Path:
    return FIGURES / f"{stem}.{fmt}"


def log_file(stage: str, *parts: str) -> Path:
    """``logs/<stage>/<part>/…/<last>.log`` (``logs/<stage>.log`` without parts)."""
    if not parts:
        return LOGS / f"{stage}.log"
    return LOGS.joinpath(stage, *parts[:-1], f"{parts[-1]}.log")
