"""End to end: ``promptbias probe KIND`` through the real CLI on a tiny on-disk dataset (CPU, no network)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from promptbias.cli import cli
from promptbias.probes import PROBES
from promptbias.probes.common import TABLE_COLUMNS

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["red_square", "blue circle", "green triangle"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """data/raw/demo_shapes/ + data/raw/demo_shapes.json (docs/interfaces.md format), cwd = tmp."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "raw" / "demo_shapes"
    items: dict[str, list] = {"train": [], "val": [], "test": []}
    for split, per_class in (("train", 1), ("val", 1), ("test", 3)):
        for label, name in enumerate(CLASSES):
            for k in range(per_class):
                rel = f"{name.replace(' ', '_')}/{split}_{k}.png"
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                size = (40 + 8 * k, 36)  # non-square: exercises resize + center crop
                Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
                    folder / rel
                )
                items[split].append([rel, label, name])
    split = {"dataset": "demo_shapes", "classnames": CLASSES, "template": "a photo of a {}.", **items}
    (tmp_path / "data" / "raw" / "demo_shapes.json").write_text(json.dumps(split))
    monkeypatch.chdir(tmp_path)
    return tmp_path


SETS = [
    "model.name=promptbias-tiny",
    "model.pretrained=null",
    "device=cpu",
    "data.root=data",
    "probes.max_images=7",
    "probes.sample_seed=3",
    "probes.batch_size=3",
    "probes.map_images=2",
    "probes.rotations=[0,90,180]",
    "methods.prompt.depth_text=2",
    "methods.prompt.depth_vision=2",
    "methods.prompt.n_ctx_vision=2",
    "methods.bias.depth_text=2",
    "methods.bias.depth_vision=2",
]


def _args(*extra: str) -> list[str]:
    args = ["--params", str(REPO / "params.yaml")]
    for s in SETS:
        args += ["--set", s]
    return [*args, *extra]


def _invoke(*extra: str):
    result = CliRunner().invoke(cli, _args(*extra), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _train_prompt(workspace: Path) -> None:
    """Stand-in for `promptbias train`: a prompt method with random (non-zero) prompts, saved as the run
    with the training identity that evaluate/probe check (this config's train job and backbone)."""
    from promptbias import identity
    from promptbias.config import load_params, method_settings
    from promptbias.methods import build_method
    from promptbias.model import load_clip
    from promptbias.pipeline.plan import job_values

    cfg = load_params([str(REPO / "params.yaml")], SETS)
    _, hp = method_settings(cfg, "prompt")
    torch.manual_seed(0)
    clip = load_clip("promptbias-tiny", None)
    method = build_method("prompt", clip, CLASSES, "a photo of a {}.", **hp)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    name, params = job_values(cfg, "train", {"dataset": "demo_shapes", "method": "prompt", "seed": 1})
    trained = {"job": name, "params": params, "backbone": identity.backbone(cfg["model"])}
    path = workspace / "runs" / "demo_shapes" / "prompt" / "seed1" / "params.safetensors"
    method.save(path, identity=trained, status="ok")


def test_probe_cli_writes_tidy_tables_sidecars_and_arrays(workspace):
    _train_prompt(workspace)
    for method in ("zeroshot", "prompt"):
        for kind in sorted(PROBES):
            _invoke("probe", kind, "--dataset", "demo_shapes", "--method", method, "--seed", "1")
            out = workspace / "probes" / "demo_shapes" / method / "seed1"
            df = pd.read_parquet(out / f"{kind}.parquet")
            assert list(df.columns) == list(TABLE_COLUMNS)
            assert len(df) > 0 and set(df.branch) <= {"vision", "text"}
            assert (
                (df.dataset == "demo_shapes").all() and (df.method == method).all() and (df.seed == 1).all()
            )
            assert (df.probe == kind).all()
            side = json.loads((out / f"{kind}.json").read_text())
            assert side["conventions"] and side["provenance"]["versions"]["torch"]
            assert side["settings"]["start_layer"] == 0 and side["sample"]["n_test"] == 9
            if kind != "maps":
                assert side["sample"]["n_images"] == 7
    files = sorted(p.name for p in (workspace / "probes" / "demo_shapes" / "prompt" / "seed1").iterdir())
    assert not [f for f in files if f.startswith(".")]  # no temp files left behind
    maps = np.load(workspace / "probes/demo_shapes/prompt/seed1/maps.npz")
    assert maps["cls_method"].shape == (2, 3, 2, 4, 4) and maps["prompt_similarity"].shape == (
        2,
        3,
        2,
        2,
        4,
        4,
    )
    side = json.loads((workspace / "probes/demo_shapes/prompt/seed1/maps.json").read_text())
    assert list(maps["image_ids"]) == side["sample"]["image_ids"]
    rel = json.loads((workspace / "probes/demo_shapes/prompt/seed1/relevancy.json").read_text())
    assert rel["conventions"]["text_after_eos_max_abs"] == 0
    # the sample is the same for every method (image for image comparisons)
    zs = json.loads((workspace / "probes/demo_shapes/zeroshot/seed1/relevancy.json").read_text())
    assert zs["sample"]["image_ids"] == rel["sample"]["image_ids"]


def test_probe_cli_user_errors(workspace):
    result = CliRunner().invoke(
        cli, _args("probe", "nope", "--dataset", "demo_shapes", "--method", "zeroshot", "--seed", "1")
    )
    assert result.exit_code != 0 and "unknown" in str(result.exception or result.output)
    result = CliRunner().invoke(
        cli, _args("probe", "maps", "--dataset", "demo_shapes", "--method", "bias", "--seed", "1")
    )
    assert result.exit_code != 0 and "promptbias train" in str(result.exception)


@pytest.mark.parametrize(
    ("files", "figure", "new_trains"),
    [
        (("params.yaml",), "prompt-d12-n4", 11),  # the paper: no evaluated run is 4+4 in every layer
        (("params.yaml", "config/demo.yaml"), "prompt-d4-n4", 1),  # the demo grid trains it on demo_shapes
    ],
    ids=["paper", "demo"],
)
def test_the_relevancy_prompt_model_is_probed_and_trained_on_every_sweep_dataset(files, figure, new_trains):
    from promptbias.pipeline.plan import Pipeline

    pipe = Pipeline.from_files([str(REPO / f) for f in files])
    jobs = list(pipe.jobs())
    probed = {
        j.wildcards["dataset"] for j in jobs if j.stage.name == "probe" and j.wildcards["method"] == figure
    }
    assert probed == set(pipe.cfg["sweep"]["datasets"])
    trained = {(j.wildcards["dataset"], j.wildcards["seed"]) for j in jobs
               if j.stage.name == "train" and j.wildcards["method"] == figure}  # fmt: skip
    evaluated = {(j.wildcards["dataset"], j.wildcards["seed"]) for j in jobs
                 if j.stage.name == "evaluate" and j.wildcards["method"] == figure}  # fmt: skip
    assert {(d, str(s)) for d in probed for s in pipe.cfg["probes"]["seeds"]} <= trained
    assert len(trained - evaluated) == new_trains  # trained for the figures only: the cost


def test_zeroshot_relevancy_uses_the_configured_template(workspace):
    template = "a drawing of a {}."  # not the dataset's template
    _invoke("--set", f"probes.relevancy_template={template}", "probe", "relevancy", "attention_stats",
            "--dataset", "demo_shapes", "--method", "zeroshot", "--seed", "1")  # fmt: skip
    out = workspace / "probes/demo_shapes/zeroshot/seed1"
    rel = json.loads((out / "relevancy.json").read_text())
    assert rel["conventions"]["zeroshot_template"] == template
    assert rel["settings"]["relevancy_template"] == template
    stats = pd.read_parquet(out / "attention_stats.parquet")
    assert (
        stats[(stats.branch == "text") & (stats.variant == "eos_row") & (stats.key == "template")].empty
        is False
    )
    assert json.loads((out / "attention_stats.json").read_text())["settings"]["relevancy_template"] is None
