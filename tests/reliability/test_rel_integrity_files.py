"""Issue 27, items 2, 3 and 8 (bomb): files that come in — learned tensors, the image cache, the zero-shot
feature memos, huge images — are checked against what they must be before a number is computed from them.

A trained workspace is built once per module (tiny CLIP with a fixed weights file, so zero-shot features
are memoised; image cache built; bias trained one epoch; bias and zeroshot evaluated). Each case copies
it, damages one file and runs the real console entry in-process (``promptbias.cli.main``):

* refused inputs: exit 2, exactly one ``error:`` line naming the file and the fix, workspace unchanged;
* a damaged feature memo (a throw-away cache): recomputed — the metrics equal the undamaged run's and the
  memo on disk verifies again.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load as safetensors_load
from safetensors.torch import load_file, save_file

from tests.reliability.helpers import describe_diff, one_error_line, snapshot
from tests.workspace import Workspace, strict_json

P = ["--params", "params.yaml"]
DS = "demo_shapes"
EVAL_BIAS = ["evaluate", "--dataset", DS, "--method", "bias", "--seed", "1"]
EVAL_ZS = ["evaluate", "--dataset", DS, "--method", "zeroshot", "--seed", "1"]
TRAIN_BIAS = ["train", "--dataset", DS, "--method", "bias", "--seed", "1"]
PARAMS = "runs/demo_shapes/bias/seed1/params.safetensors"
RETRAIN = "retrain: delete runs/demo_shapes/bias/seed1/"


def _main(ws: Path, argv: list[str]) -> int:
    from promptbias.cli import main

    old = os.getcwd()
    os.chdir(ws)
    try:
        main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        os.chdir(old)
    return 0


@pytest.fixture(scope="module")
def trained(base_ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """base_ws + fixed tiny weights + the image cache + bias trained (1 epoch) + bias/zeroshot evaluated."""
    from promptbias.model import load_clip

    root = tmp_path_factory.mktemp("integrity")
    torch.manual_seed(0)
    weights = root / "tiny.safetensors"
    state = load_clip("promptbias-tiny", None).model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    ws = base_ws.copy(root / "ws")
    cfg = yaml.safe_load(ws.params.read_text())
    cfg["model"]["pretrained"] = str(weights)
    cfg["train"]["epochs"] = 1
    ws.params.write_text(yaml.safe_dump(cfg, sort_keys=False))
    ws.cli("cache", DS)
    ws.cli(*TRAIN_BIAS)
    ws.cli(*EVAL_BIAS)
    ws.cli(*EVAL_ZS)
    assert _npy(ws.path).is_file() and len(_memos(ws.path)) == 1
    return ws


def _npy(ws: Path) -> Path:
    (npy,) = (ws / "data/cache" / DS).glob("images_*.npy")
    return npy


def _index(ws: Path) -> Path:
    return _npy(ws).with_suffix(".json")


def _memos(ws: Path) -> list[Path]:
    return sorted((ws / "data/features" / DS).glob("*.safetensors"))


def _metrics(ws: Path, method: str) -> dict:
    return strict_json(ws / f"metrics/{DS}/{method}/seed1.json")


def _same_stat(path: Path, edit: Callable[[Path], None]) -> None:
    """Edit ``path`` in place and restore its mtime (the size stays as the edit leaves it)."""
    before = path.stat()
    edit(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


# ------------------------------------------------------------------------------ learned tensors


def _resave(ws: Path, change: Callable[[dict[str, torch.Tensor], dict], None]) -> None:
    """Rewrite the trained params file with ``change(tensors, header)`` applied, its header otherwise kept."""
    from safetensors import safe_open

    path = ws / PARAMS
    with safe_open(str(path), framework="pt") as fh:
        header = json.loads(fh.metadata()["promptbias"])
    tensors = load_file(str(path))
    change(tensors, header)
    save_file(tensors, str(path), metadata={"promptbias": json.dumps(header)})


def _as_dtype(dtype: torch.dtype) -> Callable[[Path], None]:
    def prepare(ws: Path) -> None:
        _resave(ws, lambda t, h: t.update({k: (v * 1000).to(dtype) for k, v in t.items()}))

    return prepare


def _extra_tensor(ws: Path) -> None:
    def change(t: dict, h: dict) -> None:
        t["extra_prompt"] = torch.zeros(3)
        h["shapes"]["extra_prompt"] = [3]

    _resave(ws, change)


def _missing_tensor(ws: Path) -> None:
    def change(t: dict, h: dict) -> None:
        del t["vision_bias.1"]
        del h["shapes"]["vision_bias.1"]

    _resave(ws, change)


def _header_shapes_lie(ws: Path) -> None:
    _resave(ws, lambda t, h: h["shapes"].update({"text_bias.0": [1]}))


def _truncated_params(ws: Path) -> None:
    path = ws / PARAMS
    path.write_bytes(path.read_bytes()[: path.stat().st_size - 40])


def _header_not_json(ws: Path) -> None:
    path = ws / PARAMS
    save_file(load_file(str(path)), str(path), metadata={"promptbias": '{"kind": "bias", "hparams": '})


# ------------------------------------------------------------------------------ the image cache


def _zero_cache(ws: Path) -> None:
    def zero(npy: Path) -> None:
        size = npy.stat().st_size
        with open(npy, "r+b") as fh:
            fh.seek(128)
            fh.write(b"\0" * (size - 128))

    _same_stat(_npy(ws), zero)


def _reorder_index_paths(ws: Path) -> None:
    """Two rows' paths (and their source digests, consistently) swapped: each row now names another image."""
    meta = json.loads(_index(ws).read_text())
    for key in ("paths", "sha256"):
        meta[key][0], meta[key][1] = meta[key][1], meta[key][0]
    _index(ws).write_text(json.dumps(meta))


def _damage_index(ws: Path) -> None:
    text = _index(ws).read_text()
    _index(ws).write_text(text[: len(text) // 2])


def _older_index(ws: Path) -> None:
    """An index as promptbias wrote it before the cache's bytes were digested."""
    meta = json.loads(_index(ws).read_text())
    meta.pop("npy", None)
    meta.pop("seal", None)
    _index(ws).write_text(json.dumps(meta))


def _cache_of_another_size(ws: Path) -> None:
    """The files of a cache built at another size, renamed over this size's cache."""
    npy, index = _npy(ws), _index(ws)
    size = int(npy.stem.split("_")[1])
    other = size // 2
    assert _main(ws, [*P, "cache", DS, "--image-size", str(other)]) == 0
    shutil.move(npy.with_name(f"images_{other}.npy"), npy)
    shutil.move(index.with_name(f"images_{other}.json"), index)


def _npy_truncated(ws: Path) -> None:
    npy = _npy(ws)
    npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])


def _npy_header_edited(ws: Path) -> None:
    """``fortran_order`` flipped in the .npy header (same length, same shape): every image transposed."""

    def flip(npy: Path) -> None:
        data = npy.read_bytes()
        head = data[:128].replace(b"'fortran_order': False", b"'fortran_order': True ")
        assert head != data[:128]
        npy.write_bytes(head + data[128:])

    _same_stat(_npy(ws), flip)


# ------------------------------------------------------------------------------ huge images


def _huge_train_image(pixels: int) -> Callable[[Path], None]:
    def prepare(ws: Path) -> None:
        from PIL import Image

        few = json.loads((ws / "data/splits/demo_shapes/shot4_seed1.json").read_text())
        img = ws / "data/raw/demo_shapes" / few["train"][0][0]
        Image.new("L", (pixels // 10_000, 10_000)).save(img, format="PNG")  # tiny file, 100+ MP decoded

    return prepare


@dataclass(frozen=True)
class Case:
    id: str
    prepare: Callable[[Path], None]
    argv: list[str]
    names: tuple[str, ...]


STALE = "— rebuild it: `promptbias cache demo_shapes`"
CASES = [
    # learned tensors: exactly the declared names, shapes and dtypes, the header consistent with them
    Case(
        "params-int32", _as_dtype(torch.int32), EVAL_BIAS, (PARAMS, "is int32", "declares float32", RETRAIN)
    ),
    Case("params-fp16", _as_dtype(torch.float16), EVAL_BIAS, (PARAMS, "is float16", RETRAIN)),
    Case("params-extra-tensor", _extra_tensor, EVAL_BIAS, (PARAMS, "'extra_prompt'", "not one of", RETRAIN)),
    Case(
        "params-missing-tensor", _missing_tensor, EVAL_BIAS, (PARAMS, "'vision_bias.1' is missing", RETRAIN)
    ),
    Case(
        "params-header-shapes-lie",
        _header_shapes_lie,
        EVAL_BIAS,
        (PARAMS, "'text_bias.0'", "header", RETRAIN),
    ),
    Case("params-truncated", _truncated_params, EVAL_BIAS, (PARAMS, "not a readable safetensors", RETRAIN)),
    Case(
        "params-header-not-json", _header_not_json, EVAL_BIAS, (PARAMS, "damaged promptbias header", RETRAIN)
    ),
    # the image cache: its bytes and its index verified on every use
    Case(
        "cache-zeroed-in-place",
        _zero_cache,
        EVAL_BIAS,
        (".npy: stale cache (its bytes do not match the digest recorded when it was built)", STALE),
    ),
    Case(
        "cache-index-paths-reordered", _reorder_index_paths, EVAL_BIAS, (".json: stale cache", "seal", STALE)
    ),
    Case("cache-index-damaged", _damage_index, EVAL_BIAS, (".json: stale cache", "not valid JSON", STALE)),
    Case("cache-index-older-promptbias", _older_index, EVAL_BIAS, (".json: stale cache", "older", STALE)),
    Case("cache-of-another-size", _cache_of_another_size, EVAL_BIAS, (".json: stale cache", "px", STALE)),
    Case("cache-npy-truncated", _npy_truncated, EVAL_BIAS, (".npy: stale cache", "bytes", STALE)),
    Case("cache-npy-header-edited", _npy_header_edited, EVAL_BIAS, (".npy: stale cache", "header", STALE)),
    # decompression bombs: one line, refused (PIL's warning range and its hard-error range)
    Case("image-100-megapixels", _huge_train_image(100_000_000), [*TRAIN_BIAS], (".png", "100 megapixels")),
    Case("image-200-megapixels", _huge_train_image(200_000_000), [*TRAIN_BIAS], (".png", "200 megapixels")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_damaged_file_is_refused_in_one_line_and_nothing_is_written(
    case: Case, trained: Workspace, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ws = trained.copy(tmp_path / "ws")
    case.prepare(ws.path)
    before = snapshot(ws.path)
    capfd.readouterr()
    code = _main(ws.path, [*P, *case.argv])
    err = capfd.readouterr().err
    assert code == 2, f"exit {code}, stderr: {err!r}"
    one_error_line(err, case.names)
    after = snapshot(ws.path)
    assert after == before, f"the failed command wrote to the workspace: {describe_diff(before, after)}"


# ------------------------------------------------------------------------------ feature memos


def _zero_memo(memo: Path) -> None:
    _same_stat(memo, lambda p: p.write_bytes(p.read_bytes()[:-64] + b"\0" * 64))


def _memo_as_fp16(memo: Path) -> None:
    save_file({"features": load_file(str(memo))["features"].half()}, str(memo))


def _memo_wrong_shape(memo: Path) -> None:
    save_file({"features": load_file(str(memo))["features"][:, :-1].contiguous()}, str(memo))


def _memo_swapped_rows(memo: Path) -> None:
    """Rows reordered with the memo's own metadata kept (a careless re-save): its recorded digest fails."""
    from safetensors import safe_open

    with safe_open(str(memo), framework="pt") as fh:
        meta = fh.metadata()
    feats = load_file(str(memo))["features"]
    save_file({"features": feats.flip(0).contiguous()}, str(memo), metadata=meta)


@pytest.mark.parametrize(
    "damage",
    [_zero_memo, _memo_as_fp16, _memo_wrong_shape, _memo_swapped_rows],
    ids=["memo-zeroed-in-place", "memo-fp16", "memo-wrong-shape", "memo-rows-reordered-metadata-kept"],
)
def test_a_damaged_feature_memo_is_recomputed_with_the_right_numbers(
    damage: Callable[[Path], None], trained: Workspace, tmp_path: Path
) -> None:
    ws = trained.copy(tmp_path / "ws")
    (memo,) = _memos(ws.path)
    good = memo.read_bytes()
    expected = _metrics(ws.path, "zeroshot")
    damage(memo)
    assert memo.read_bytes() != good
    assert _main(ws.path, [*P, *EVAL_ZS]) == 0
    got = _metrics(ws.path, "zeroshot")
    for key in ("accuracy", "macro_accuracy", "val_accuracy"):
        if key in expected:
            assert got[key] == expected[key], key
    assert got["accuracy"] == expected["accuracy"]
    assert _memos(ws.path) == [memo]
    # recomputed and rewritten: the same features as the first time, bit for bit
    assert torch.equal(load_file(str(memo))["features"], safetensors_load(good)["features"])
    from promptbias.frozen_features import read_memo

    n = len(json.loads((ws.path / "data/raw/demo_shapes.json").read_text())["test"])
    assert read_memo(memo, memo.stem, n) is not None


def test_feature_memos_follow_the_umask(trained: Workspace, tmp_path: Path) -> None:
    """Like every other output (was 0600: safetensors' save_file renamed its own temporary over ours)."""
    ws = trained.copy(tmp_path / "ws")
    shutil.rmtree(ws.path / "data/features")
    old = os.umask(0o022)
    try:
        assert _main(ws.path, [*P, *EVAL_ZS]) == 0
    finally:
        os.umask(old)
    (memo,) = _memos(ws.path)
    metrics = ws.path / f"metrics/{DS}/zeroshot/seed1.json"
    assert stat.S_IMODE(memo.stat().st_mode) == stat.S_IMODE(metrics.stat().st_mode) == 0o644


def test_the_cache_is_verified_and_used(trained: Workspace, tmp_path: Path) -> None:
    """The check costs no correctness: rows read through it equal a fresh decode, bit for bit."""
    from promptbias.data import images

    ws = trained.copy(tmp_path / "ws")
    split = json.loads((ws.path / "data/raw/demo_shapes.json").read_text())
    size = int(_npy(ws.path).stem.split("_")[1])
    items = split["test"][::7] + split["val"][:3]
    cached, labels = images.load_eval_images(ws.path / "data", DS, items, size, cache=True)
    fresh, labels2 = images.load_eval_images(ws.path / "data", DS, items, size, cache=False)
    assert torch.equal(cached, fresh) and torch.equal(labels, labels2)
    meta = json.loads(_index(ws.path).read_text())
    assert len(meta["npy"]["chunks"]) >= 1 and meta["npy"]["digest"] == "sha256"
    assert np.load(_npy(ws.path)).shape[0] == meta["count"]


def test_the_rebuild_the_message_names_restores_the_result(trained: Workspace, tmp_path: Path) -> None:
    """`promptbias cache demo_shapes` on a cache zeroed in place: the next evaluate gives the first numbers."""
    ws = trained.copy(tmp_path / "ws")
    expected = _metrics(ws.path, "bias")
    _zero_cache(ws.path)
    assert _main(ws.path, [*P, *EVAL_BIAS]) == 2
    assert _main(ws.path, [*P, "cache", DS]) == 0
    assert _main(ws.path, [*P, *EVAL_BIAS]) == 0
    got = _metrics(ws.path, "bias")
    assert (got["accuracy"], got["val_accuracy"]) == (expected["accuracy"], expected["val_accuracy"])
