"""The provenance invariant, stage by stage (tiny CLIP, demo world): a stage refuses a stale or mismatched
checkpoint, cache, split or config in one line, and what its record states is what it used.

End to end through the engines: tests/test_provenance_e2e.py.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.workspace import REPO, Workspace

RUN = "runs/demo_shapes/{method}/seed1"
TRAIN = ("train", "--dataset", "demo_shapes", "--method", "{method}", "--seed", "1")
EVALUATE = ("evaluate", "--dataset", "demo_shapes", "--method", "{method}", "--seed", "1")


def _args(template: tuple[str, ...], method: str) -> list[str]:
    return [a.format(method=method) for a in template]


def _one_error(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def _history_seconds(ws: Workspace, method: str) -> list[float]:
    train = json.loads((ws.path / RUN.format(method=method) / "train.json").read_text())
    return [h["seconds"] for h in train["history"]]


def _repaint(path, seed: int) -> None:
    """Other pixels, same file name and size in pixels (a replaced image)."""
    with Image.open(path) as img:
        size = img.size
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return Workspace.create(tmp_path_factory.mktemp("provenance") / "base", datasets=["demo_shapes"])


@pytest.fixture(scope="module")
def weights_ws(tmp_path_factory):
    """A workspace whose backbone is a weights file (as the demo CLIP is), cache built."""
    import torch

    from promptbias.model import load_clip

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    weights = root / "clip.safetensors"
    save_file(
        {k: v.contiguous() for k, v in load_clip("promptbias-tiny", None).model.state_dict().items()}, weights
    )
    ws = Workspace.create(
        root / "ws", datasets=["demo_shapes"], overrides={"model": {"pretrained": str(weights)}}
    )
    ws.cli("cache", "demo_shapes")
    return ws, weights


# ----------------------------------------------------------------------------------- checkpoints
def test_a_finished_job_keeps_no_checkpoint_and_a_rerun_retrains(base, tmp_path):
    ws = base.copy(tmp_path / "ws")
    ws.run(*_args(TRAIN, "bias"), check=True)
    assert not (ws.path / RUN.format(method="bias") / "checkpoint.pt").exists()
    first = _history_seconds(ws, "bias")
    again = ws.run(*_args(TRAIN, "bias"), check=True)  # e.g. dvc repro -f / snakemake --forcerun
    assert "resuming" not in again.stderr and _history_seconds(ws, "bias") != first


def test_a_checkpoint_resumes_only_the_job_that_wrote_it(base, tmp_path):
    ws = base.copy(tmp_path / "ws")
    run = ws.path / RUN.format(method="bias")
    ws.popen("--set", "train.epochs=4", *_args(TRAIN, "bias"), fault="checkpoint.pt:kill:2").communicate(
        timeout=300
    )
    assert (run / "checkpoint.pt").is_file()
    other_lr = ws.run("--set", "train.epochs=4", "--set", "methods.bias.lr=0.02", *_args(TRAIN, "bias"))
    assert other_lr.returncode == 0, other_lr.stderr
    assert "written by another job (differs in: params.methods.bias.lr)" in other_lr.stderr
    assert "resuming" not in other_lr.stderr
    # killed again; then one of the few-shot train images is replaced at the same path
    ws.popen("--set", "train.epochs=4", *_args(TRAIN, "bias"), fault="checkpoint.pt:kill:2").communicate(
        timeout=300
    )
    split = json.loads((ws.path / "data/splits/demo_shapes/shot4_seed1.json").read_text())
    _repaint(ws.path / "data/raw/demo_shapes" / split["train"][0][0], seed=5)
    other_images = ws.run("--set", "train.epochs=4", *_args(TRAIN, "bias"))
    assert other_images.returncode == 0, other_images.stderr
    assert "differs in: inputs.train_images" in other_images.stderr and "resuming" not in other_images.stderr


# ------------------------------------------------------------------------------ suspect inputs
def test_evaluate_refuses_another_jobs_parameters(base, tmp_path):
    ws = base.copy(tmp_path / "ws")
    ws.run(*_args(TRAIN, "prompt-d1-n1"), check=True)
    target = ws.path / RUN.format(method="prompt")
    target.mkdir(parents=True)
    (target / "params.safetensors").write_bytes(
        (ws.path / RUN.format(method="prompt-d1-n1") / "params.safetensors").read_bytes()
    )
    line = _one_error(ws.run(*_args(EVALUATE, "prompt")))
    assert "written by job train-demo_shapes-prompt-d1-n1-s1, not train-demo_shapes-prompt-s1" in line
    assert not (ws.path / "metrics/demo_shapes/prompt/seed1.json").exists()


def test_evaluate_refuses_a_config_that_differs_from_the_training(base, tmp_path):
    ws = base.copy(tmp_path / "ws")
    ws.run(*_args(TRAIN, "prompt"), check=True)
    line = _one_error(ws.run("--set", "methods.prompt.depth_text=1", *_args(EVALUATE, "prompt")))
    assert "trained with other settings than this config (methods.prompt.depth_text)" in line
    assert "promptbias train --dataset demo_shapes --method prompt --seed 1" in line


def test_evaluate_refuses_non_finite_parameters(base, tmp_path):
    ws = base.copy(tmp_path / "ws")
    ws.run(*_args(TRAIN, "bias"), check=True)
    path = ws.path / RUN.format(method="bias") / "params.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name][0] = float("nan")
    save_file(tensors, path, metadata=meta)  # the header still says status "ok"
    line = _one_error(ws.run(*_args(EVALUATE, "bias")))
    assert f"tensor {name!r} holds NaN or infinite values" in line


def test_evaluate_refuses_a_relabelled_split(base, tmp_path):
    ws = base.copy(tmp_path / "ws")
    ws.run(*_args(TRAIN, "bias"), check=True)
    path = ws.path / "data/splits/demo_shapes/shot4_seed1.json"
    split = json.loads(path.read_text())
    split["val"][0][1] = (split["val"][0][1] + 1) % 10  # one label changed by hand
    path.write_text(json.dumps(split))
    line = _one_error(ws.run(*_args(EVALUATE, "bias")))
    assert "shot4_seed1.json: not the 4-shot subset of seed 1" in line


def test_evaluate_refuses_parameters_trained_on_other_backbone_weights(weights_ws, tmp_path):
    ws = weights_ws[0].copy(tmp_path / "ws")
    weights = ws.path.parent / "clip.safetensors"
    ws.params.write_text(ws.params.read_text().replace(str(weights_ws[1]), str(weights)))
    weights.write_bytes(weights_ws[1].read_bytes())
    ws.run(*_args(TRAIN, "bias"), check=True)
    state = load_file(weights)  # the backbone is pretrained again: other weights, same path
    state["logit_scale"] = state["logit_scale"] + 0.25
    save_file(state, weights)
    line = _one_error(ws.run(*_args(EVALUATE, "bias")))
    assert "trained on other backbone weights" in line


# ------------------------------------------------------------------------------- memo and cache
def test_replaced_test_images_are_a_stale_cache_and_a_memo_miss(weights_ws, tmp_path):
    ws = weights_ws[0].copy(tmp_path / "ws")
    weights = weights_ws[1]
    ws.cli(*_args(EVALUATE, "zeroshot"))
    memos = set((ws.path / "data/features/demo_shapes").glob("*.safetensors"))
    assert len(memos) == 1
    test = json.loads((ws.path / "data/raw/demo_shapes.json").read_text())["test"]
    for k, item in enumerate(test[:5]):  # replaced at the same paths
        _repaint(ws.path / "data/raw/demo_shapes" / item[0], seed=100 + k)
    line = _one_error(ws.run(*_args(EVALUATE, "zeroshot")))
    assert "image(s) changed since the cache was built" in line and "promptbias cache demo_shapes" in line
    ws.cli("cache", "demo_shapes")
    ws.cli(*_args(EVALUATE, "zeroshot"))
    assert len(set((ws.path / "data/features/demo_shapes").glob("*.safetensors")) - memos) == 1  # a miss
    # without the image cache, the memo alone: a replaced image is a miss, never a stale hit
    ws.params.write_text(ws.params.read_text().replace("cache_images: true", "cache_images: false"))
    _repaint(ws.path / "data/raw/demo_shapes" / test[7][0], seed=7)
    before = set((ws.path / "data/features/demo_shapes").glob("*.safetensors"))
    ws.cli(*_args(EVALUATE, "zeroshot"))
    assert len(set((ws.path / "data/features/demo_shapes").glob("*.safetensors")) - before) == 1
    assert weights.is_file()


# ------------------------------------------------------------------------------- DVC's tracking
def test_under_dvc_a_command_reads_only_what_dvc_yaml_tracks(base, tmp_path, monkeypatch):
    ws = base.copy(tmp_path / "ws")
    layer = ws.path / "layer.yaml"
    layer.write_text("methods:\n  bias:\n    lr: 0.02\n")
    files = ["--params", str(ws.params), "--params", str(layer)]
    subprocess.run(
        ["promptbias", *files, "dvc-yaml"], cwd=ws.path, check=True, capture_output=True, env=_venv_path()
    )
    monkeypatch.setenv("DVC_STAGE", "train-demo_shapes-bias-s1")
    train = _args(TRAIN, "bias")

    def refused(*args: str) -> str:
        res = subprocess.run(
            ["promptbias", *args], cwd=ws.path, capture_output=True, text=True, env=_venv_path()
        )
        return _one_error(res)

    # a command-line override of a tracked key
    assert "train.epochs: this command would use 2, but DVC records 3 from" in refused(
        *files, "--set", "train.epochs=2", *train
    )
    # a layered file that gained a key after dvc.yaml was generated
    layer.write_text("methods:\n  bias:\n    lr: 0.02\n    depth_text: 1\n")
    line = refused(*files, *train)
    assert f"it tracks methods.bias.depth_text in {ws.params}, but {layer} sets it last" in line
    # the stage DVC runs must be the job the command is
    monkeypatch.setenv("DVC_STAGE", "train-demo_shapes-prompt-s1")
    layer.write_text("methods:\n  bias:\n    lr: 0.02\n")
    assert (
        "DVC stage train-demo_shapes-prompt-s1 runs the command of job train-demo_shapes-bias-s1"
        in refused(*files, *train)
    )
    monkeypatch.setenv("DVC_STAGE", "train-demo_shapes-bias-s1")  # consistent: runs, and says what it used
    res = subprocess.run(
        ["promptbias", *train], cwd=ws.path, capture_output=True, text=True, env=_venv_path()
    )
    assert res.returncode == 0, res.stderr  # no --params: dvc.yaml's layering (params.yaml + layer.yaml)
    record = json.loads((ws.path / RUN.format(method="bias") / "train.json").read_text())
    assert record["params"]["methods.bias"]["lr"] == 0.02 and record["job"] == "train-demo_shapes-bias-s1"


def test_a_job_in_a_git_repository_without_dvc_creates_and_stages_nothing(base, tmp_path):
    ws = base.copy(tmp_path / "ws")
    for marker in (".dvc", ".dvcignore"):
        subprocess.run(["rm", "-rf", str(ws.path / marker)], check=True)
    git = {"cwd": ws.path, "check": True, "capture_output": True, "text": True}
    subprocess.run(["git", "init", "-q"], **git)
    ws.run(*_args(TRAIN, "bias"), check=True)
    assert not (ws.path / ".dvc").exists()
    assert not subprocess.run(["git", "diff", "--cached", "--name-only"], **git).stdout.strip()


# ------------------------------------------------------------------------------------- threads
def test_results_do_not_depend_on_the_engines_thread_count(base, tmp_path):
    """Snakemake passes its job threads as OMP_NUM_THREADS; the commands fix their own."""
    outs = []
    for threads in ("1", "2"):
        ws = base.copy(tmp_path / f"t{threads}")
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        ws.run("--set", "demo.pretrain_steps=4", "--set", "demo.corpus_size=256", "--set", "demo.eval_datasets=[]",
               "pretrain-demo", check=True, env_extra=env)  # fmt: skip
        ws.run(*_args(TRAIN, "bias"), check=True, env_extra=env)
        outs.append(
            [
                (ws.path / p).read_bytes()
                for p in (
                    "runs/demo_clip/open_clip_model.safetensors",
                    f"{RUN.format(method='bias')}/params.safetensors",
                )
            ]
        )
    assert outs[0] == outs[1]


def _venv_path() -> dict[str, str]:
    import os
    import sys
    from pathlib import Path

    return dict(
        os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1"
    )


def test_params_file_defaults_live_in_params_yaml_only():
    """Every key is required by the schema (no schema defaults): params.yaml holds the one set of defaults."""
    from promptbias.config import params_schema

    def walk(node, path=""):
        assert "default" not in node, f"{path}: a default in the schema"
        for key, child in (node.get("properties") or {}).items():
            if child.get("type") == "object" or "properties" in child:
                assert set(child.get("properties", {})) == set(child.get("required", [])), f"{path}.{key}"
            walk(child, f"{path}.{key}")

    walk(params_schema())
    assert yaml.safe_load((REPO / "params.yaml").read_text())["cpu_threads"] >= 1
