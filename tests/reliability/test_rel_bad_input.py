"""Case 4 — bad input: one line naming the problem and the fix, exit code 2, nothing written.

Every case runs the real console entry (``promptbias.cli.main``, in-process for speed; a few also as a
``python -m promptbias.cli`` subprocess) in a fresh copy of the demo workspace and checks: exit code 2,
stderr is exactly one line starting with ``error:`` that names the file/key, and the workspace (every
file, folder and link under it) is byte-for-byte what it was before the command.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.reliability.helpers import describe_diff, one_error_line, run_cli, snapshot, sub_env
from tests.workspace import Workspace

TRAIN = ["train", "--dataset", "demo_shapes", "--method", "bias", "--seed", "1"]
PROMPT_TRAIN = ["train", "--dataset", "demo_shapes", "--method", "prompt", "--seed", "1"]
P = ["--params", "params.yaml"]
IMAGE = "data/raw/demo_shapes/images/red_circle"


@dataclass(frozen=True)
class Case:
    """A bad input: ``prepare(workspace, outside)`` edits things and returns the argv; ``names`` must appear."""

    id: str
    prepare: Callable[[Path, Path], list[str]]
    names: tuple[str, ...]


def _edit_params(ws: Path, **dotted: object) -> None:
    cfg = yaml.safe_load((ws / "params.yaml").read_text())
    for key, value in dotted.items():
        node = cfg
        *parents, last = key.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    (ws / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def _params_case(**dotted: object) -> Callable[[Path, Path], list[str]]:
    def prepare(ws: Path, outside: Path) -> list[str]:
        _edit_params(ws, **dotted)
        return [*P, *TRAIN]

    return prepare


def _train_image(ws: Path) -> Path:
    """A train image of the seed-1 few-shot split (so training must decode it)."""
    import json

    few = json.loads((ws / "data/splits/demo_shapes/shot4_seed1.json").read_text())
    return ws / "data/raw/demo_shapes" / few["train"][0][0]


def _damage_image(how: str) -> Callable[[Path, Path], list[str]]:
    def prepare(ws: Path, outside: Path) -> list[str]:
        img = _train_image(ws)
        data = img.read_bytes()
        img.write_bytes(
            {"corrupt": b"\x89PNG not really" * 20, "truncated": data[: len(data) // 3], "empty": b""}[how]
        )
        return [*P, *TRAIN]

    return prepare


def _missing_class(ws: Path, outside: Path) -> list[str]:
    img = _train_image(ws)
    for f in img.parent.iterdir():
        f.unlink()
    img.parent.rmdir()
    return [*P, *TRAIN]


def _empty_split(ws: Path, outside: Path) -> list[str]:
    import json

    path = ws / "data/splits/demo_shapes/shot4_seed1.json"
    few = json.loads(path.read_text())
    few["train"] = []
    path.write_text(json.dumps(few))
    return [*P, *TRAIN]


def _damaged_split_json(ws: Path, outside: Path) -> list[str]:
    path = ws / "data/raw/demo_shapes.json"
    path.write_text(path.read_text()[:100])
    return [*P, *TRAIN]


def _imagenet_wrong_layout(ws: Path, outside: Path) -> list[str]:
    data = outside / "DATA"
    for split in ("train", "val"):
        (data / "imagenet" / split / "n01440764").mkdir(parents=True, exist_ok=True)  # no images/ level
    (data / "imagenet" / "classnames.txt").write_text("n01440764 tench\n")
    return [*P, "fetch", "imagenet", "--from", str(data)]


def _from_missing(ws: Path, outside: Path) -> list[str]:
    (outside / "EMPTY").mkdir(exist_ok=True)
    return [*P, "fetch", "eurosat", "--from", str(outside / "EMPTY")]


def _checksum_mismatch(ws: Path, outside: Path) -> list[str]:
    folder = ws / "data/raw/dtd"
    folder.mkdir(parents=True)
    (folder / "dtd-r1.0.1.tar.gz").write_bytes(b"definitely not the DTD archive")
    return [*P, "fetch", "dtd"]


def _wrong_weights(ws: Path, outside: Path) -> list[str]:
    _edit_params(ws, model__name="promptbias-demo", model__pretrained=str(outside / "tiny.safetensors"))
    return [*P, *TRAIN]


def _bad_yaml(ws: Path, outside: Path) -> list[str]:
    (ws / "params.yaml").write_text((ws / "params.yaml").read_text() + "train: [unclosed\n")
    return [*P, *TRAIN]


def _bad_params_safetensors(ws: Path, outside: Path) -> list[str]:
    run = ws / "runs/demo_shapes/bias/seed1"
    run.mkdir(parents=True)
    (run / "params.safetensors").write_bytes(b"\x00" * 7)
    return [*P, "evaluate", "--dataset", "demo_shapes", "--method", "bias", "--seed", "1"]


def _cache_corrupt_test_image(ws: Path, outside: Path) -> list[str]:
    import json

    split = json.loads((ws / "data/raw/demo_shapes.json").read_text())
    (ws / "data/raw/demo_shapes" / split["test"][0][0]).write_bytes(b"GIF89a broken")
    return [*P, "cache", "demo_shapes"]


def _rename_class_0(split: dict, name: str) -> dict:
    for entry in (e for part in ("train", "val", "test") for e in split.get(part, []) if e[1] == 0):
        entry[2] = name
    return split


def _n_ctx_overflows_context(ws: Path, outside: Path) -> list[str]:
    """64 learnable tokens (the schema's cap) + a long class name exceed the 77-token text context."""
    import json

    path = ws / "data/raw/demo_shapes.json"
    split = json.loads(path.read_text())
    split["classnames"][0] = " ".join(["extraordinarily elaborate"] * 8) + " red circle"
    path.write_text(json.dumps(_rename_class_0(split, split["classnames"][0])))
    few = ws / "data/splits/demo_shapes/shot4_seed1.json"  # the items' class name agrees in both files
    few.write_text(json.dumps(_rename_class_0(json.loads(few.read_text()), split["classnames"][0])))
    _edit_params(ws, methods__prompt__n_ctx_text=64)
    return [*P, *PROMPT_TRAIN]


def _argv(*argv: str) -> Callable[[Path, Path], list[str]]:
    return lambda ws, outside: list(argv)


CASES = [
    # params.yaml
    Case("params-unknown-key", _params_case(train__epoch=3), ("train.epoch", "did you mean 'epochs'")),
    Case("params-wrong-type", _params_case(train__epochs="ten"), ("train.epochs", "integer")),
    Case("params-unknown-dataset-in-sweep", _params_case(sweep__datasets=["imagenett"]), ("sweep.datasets",)),
    Case(
        "params-unknown-method-in-sweep", _params_case(sweep__methods=["prompt", "lora"]), ("sweep.methods",)
    ),
    Case("params-unknown-model", _params_case(model__name="ViT-Nope-16"), ("model.name", "ViT-Nope-16")),
    Case("params-shots-zero", _params_case(data__shots=0), ("data.shots",)),
    Case("params-shots-negative", _params_case(data__shots=-4), ("data.shots",)),
    Case("params-empty-seed-list", _params_case(sweep__seeds=[]), ("sweep.seeds", "empty")),
    Case(
        "params-depth-over-layers",
        _params_case(methods__bias__depth_text=9),
        ("methods.bias.depth_text", "2 layers"),
    ),
    Case(
        "params-n_ctx-over-schema-cap",
        lambda ws, o: (_edit_params(ws, methods__prompt__n_ctx_text=70), [*P, *PROMPT_TRAIN])[1],
        ("methods.prompt.n_ctx_text", "64"),
    ),
    Case(
        "params-n_ctx-too-long-for-context", _n_ctx_overflows_context, ("n_ctx_text", "77-token text context")
    ),
    Case("params-negative-lr", _params_case(methods__bias__lr=-0.1), ("methods.bias.lr",)),
    Case("params-not-yaml", _bad_yaml, ("params.yaml", "YAML")),
    Case("params-file-missing", _argv("--params", "nope.yaml", *TRAIN), ("nope.yaml", "--params")),
    Case("set-without-equals", _argv(*P, "--set", "train.epochs", *TRAIN), ("train.epochs", "KEY=VALUE")),
    # command line
    Case(
        "cli-unknown-dataset",
        _argv(*P, "train", "--dataset", "nope", "--method", "bias", "--seed", "1"),
        ("nope", "use one of"),
    ),
    Case(
        "cli-unknown-method",
        _argv(*P, "train", "--dataset", "demo_shapes", "--method", "lora", "--seed", "1"),
        ("lora", "prompt-d"),
    ),
    Case("cli-fetch-unknown-dataset", _argv(*P, "fetch", "nope"), ("nope", "use one of")),
    Case("cli-device-cuda-without-gpu", _argv(*P, *TRAIN, "--device", "cuda"), ("cuda", "device=cpu")),
    # dataset folders
    Case(
        "dataset-not-fetched",
        _argv(*P, "train", "--dataset", "demo_textures", "--method", "bias", "--seed", "1"),
        ("demo_textures", "promptbias fetch demo_textures"),
    ),
    Case("dataset-from-folder-missing", _from_missing, ("EMPTY", "no eurosat/ folder")),
    Case("dataset-wrong-layout", _imagenet_wrong_layout, ("images/train", "--from")),
    Case("dataset-missing-class-folder", _missing_class, ("image file missing", "re-fetch")),
    Case("dataset-empty-train-split", _empty_split, ("shot4_seed1.json", "empty")),
    Case(
        "dataset-damaged-split-json",
        _damaged_split_json,
        ("demo_shapes.json", "promptbias fetch demo_shapes"),
    ),
    # images
    Case("image-corrupt", _damage_image("corrupt"), (".png", "corrupt image")),
    Case("image-truncated", _damage_image("truncated"), (".png", "corrupt image")),
    Case("image-zero-bytes", _damage_image("empty"), (".png", "corrupt image")),
    Case("image-corrupt-while-caching", _cache_corrupt_test_image, (".png", "corrupt image")),
    # integrity / weights
    Case("checksum-mismatch", _checksum_mismatch, ("dtd-r1.0.1.tar.gz", "checksum")),
    Case(
        "weights-wrong-architecture", _wrong_weights, ("tiny.safetensors", "promptbias-demo", "architecture")
    ),
    Case("trained-params-unreadable", _bad_params_safetensors, ("params.safetensors", "rerun the training")),
]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights file of the tiny CLIP (the wrong architecture for promptbias-demo)."""
    import torch
    from safetensors.torch import save_file

    from promptbias.model import load_clip

    torch.manual_seed(0)
    model = load_clip("promptbias-tiny", None).model
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    case: Case, base_ws: Workspace, tiny_weights: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from promptbias.cli import main

    ws = base_ws.copy(tmp_path / "ws")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "tiny.safetensors").symlink_to(tiny_weights)
    argv = case.prepare(ws.path, outside)
    before = snapshot(ws.path)
    capfd.readouterr()
    old = os.getcwd()
    os.chdir(ws.path)
    try:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
    finally:
        os.chdir(old)
    err = capfd.readouterr().err
    assert exit_.value.code == 2, err
    one_error_line(err, case.names)
    after = snapshot(ws.path)
    assert after == before, f"the failed command wrote to the workspace: {describe_diff(before, after)}"


SUBPROCESS_CASES = (
    "params-unknown-key",
    "cli-device-cuda-without-gpu",
    "image-truncated",
    "checksum-mismatch",
)


@pytest.mark.slow
@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_bad_input_through_the_console_script(
    case_id: str, base_ws: Workspace, tiny_weights: Path, tmp_path: Path
) -> None:
    """The same contract through a real ``python -m promptbias.cli`` process (no test harness around it)."""
    case = next(c for c in CASES if c.id == case_id)
    ws = base_ws.copy(tmp_path / "ws")
    outside = tmp_path / "outside"
    outside.mkdir()
    argv = case.prepare(ws.path, outside)
    assert argv[:2] == P
    before = snapshot(ws.path)
    res = run_cli(ws, sub_env(), *argv[2:])
    assert res.returncode == 2, res.stderr
    one_error_line(res.stderr, case.names)
    assert snapshot(ws.path) == before


def test_corrupt_checkpoint_is_not_fatal(
    base_ws: Workspace, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A damaged checkpoint.pt (not ours to trust) is reported and training starts over."""
    ws = base_ws.copy(tmp_path / "ws")
    run = ws.path / "runs/demo_shapes/bias/seed1"
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated zip")
    out = ws.cli("--set", "train.epochs=1", *TRAIN)
    assert "unreadable checkpoint" in out and "starting over" in out
    assert (run / "params.safetensors").is_file()


@pytest.mark.parametrize("errno_name", ["EACCES", "EROFS"])
def test_an_output_folder_that_cannot_be_written_is_one_line(
    errno_name: str, base_ws: Workspace, tmp_path: Path, monkeypatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """An unwritable (or read-only mounted) output folder: one line naming it, exit 2, no traceback."""
    import errno
    import tempfile

    from promptbias.cli import main

    ws = base_ws.copy(tmp_path / "ws")
    real_mkstemp = tempfile.mkstemp
    code = getattr(errno, errno_name)

    def refuse(*args, dir=None, **kwargs):  # root writes anywhere: the kernel's refusal is simulated
        if dir is not None and "runs" in Path(dir).parts:
            raise OSError(code, os.strerror(code), str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.chdir(ws.path)
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([*P, *TRAIN])
    err = capfd.readouterr().err
    assert exit_.value.code == 2, err
    line = one_error_line(err, ("runs/demo_shapes/bias/seed1", os.strerror(code)))
    assert "make it writable" in line
    assert not list((ws.path / "runs/demo_shapes/bias/seed1").glob("*.safetensors"))
