"""Integrity at the config / command-line boundary, and a failing job against a finished job's outputs.

Every bad number, option or params file is refused like any bad input (one ``error:`` line naming the
file or option, the key and the fix; exit code 2; nothing under the workspace written or deleted),
checked in a copy of a workspace that already holds a finished bias run, so "nothing written" also means
the finished run's params.safetensors, train.json, curve.csv and dvclive/ are byte for byte intact. A job
that fails later (a bad few-shot label, a disk that fills at epoch 2, a kill while DVCLive's folder is
swapped into place) leaves the finished outputs too, and the rerun completes.

Commands run in-process (``promptbias.cli.main``) except the one kill.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import pickle
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.reliability.helpers import describe_diff, one_error_line, run_cli, snapshot, sub_env
from tests.workspace import Workspace

RUN = "runs/demo_shapes/bias/seed1"
TRAIN = ["train", "--dataset", "demo_shapes", "--method", "bias", "--seed", "1"]
P = ["--params", "params.yaml"]
FINISHED = ("params.safetensors", "train.json", "curve.csv", "dvclive")  # the outputs a rerun must not touch


@pytest.fixture(scope="module")
def finished_ws(base_ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The demo workspace with a finished bias run (3 epochs, DVCLive logs); copy it, never mutate it."""
    ws = base_ws.copy(tmp_path_factory.mktemp("numbers") / "finished")
    ws.cli(*TRAIN)
    assert (ws.path / RUN / "dvclive/plots/metrics/train/loss.tsv").is_file()
    return ws


def _main(ws: Path, argv: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int | str | None, str]:
    """Run the console entry in ``ws``; (exit code, or the name of an exception that escaped; stderr)."""
    from promptbias.cli import main

    capfd.readouterr()
    old = os.getcwd()
    os.chdir(ws)
    try:
        main(argv)
        code: int | str | None = 0
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:  # a traceback: what the old code did for some of these
        code = type(exc).__name__
    finally:
        os.chdir(old)
    return code, capfd.readouterr().err


def _finished_outputs(ws: Path) -> dict[str, tuple[str, str]]:
    """The finished run's outputs (dvclive/ file by file) → digest."""
    return {k: v for k, v in snapshot(ws / RUN).items() if k.split("/")[0] in FINISHED}


def _edit_params(ws: Path, edit: Callable[[dict], None]) -> None:
    cfg = yaml.safe_load((ws / "params.yaml").read_text())
    edit(cfg)
    (ws / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def _set_lr_text(ws: Path, text: str) -> None:
    """Write ``methods.bias.lr`` as it would be typed (``text`` verbatim, e.g. ``.nan`` or ``1e-3``)."""
    lines = (ws / "params.yaml").read_text().splitlines()
    start = lines.index("  bias:")
    i = next(i for i in range(start, len(lines)) if lines[i].strip().startswith("lr:"))
    lines[i] = f"    lr: {text}"
    (ws / "params.yaml").write_text("\n".join(lines) + "\n")


@dataclass(frozen=True)
class Case:
    """A bad input: ``prepare(workspace)`` edits files and returns the argv; ``names`` must appear."""

    id: str
    prepare: Callable[[Path], list[str]]
    names: tuple[str, ...]


def _argv(*argv: str) -> Callable[[Path], list[str]]:
    return lambda ws: list(argv)


def _lr_text(text: str) -> Callable[[Path], list[str]]:
    def prepare(ws: Path) -> list[str]:
        _set_lr_text(ws, text)
        return [*P, *TRAIN]

    return prepare


def _non_utf8(ws: Path) -> list[str]:
    text = (ws / "params.yaml").read_bytes()
    (ws / "params.yaml").write_bytes(text.replace(b"promptbias-tiny", b"promptbias-t\xefny", 1))
    return [*P, *TRAIN]


def _duplicate_key(ws: Path) -> list[str]:
    lines = (ws / "params.yaml").read_text().splitlines()
    start = lines.index("  bias:")
    i = next(i for i in range(start, len(lines)) if lines[i].strip().startswith("lr:"))
    lines.insert(i + 1, "    lr: 0.5")  # a second lr under methods.bias: YAML would keep this one
    (ws / "params.yaml").write_text("\n".join(lines) + "\n")
    return [*P, *TRAIN]


def _list_params(ws: Path) -> list[str]:
    (ws / "extra.yaml").write_text("- train.epochs: 2\n")
    return [*P, "--params", "extra.yaml", *TRAIN]


def _empty_layer(ws: Path) -> list[str]:
    (ws / "extra.yaml").write_text("# overrides of the demo run\n")  # its keys lost in a bad merge
    return [*P, "--params", "extra.yaml", *TRAIN]


def _malicious_pickle(ws: Path) -> list[str]:
    class Exploit:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {ws / 'PWNED'}",))

    (ws.parent / "weights.pt").write_bytes(pickle.dumps({"state_dict": Exploit()}, protocol=4))
    _edit_params(ws, lambda cfg: cfg["model"].update(pretrained=str(ws.parent / "weights.pt")))
    return [*P, *TRAIN]


LR_KEY = "methods.bias.lr"
CASES = [
    # item 6: NaN and inf are not numbers a run can use, whichever way they come in
    Case("set-lr-nan", _argv(*P, "--set", "methods.bias.lr=nan", *TRAIN), (LR_KEY, "finite")),
    Case("set-lr-inf", _argv(*P, "--set", "methods.bias.lr=.inf", *TRAIN), (LR_KEY, "finite")),
    Case("params-lr-nan", _lr_text(".nan"), ("params.yaml", LR_KEY, "finite")),
    # item 6: an option gets the validation its params key gets
    Case("cli-lr-negative", _argv(*P, *TRAIN, "--lr", "-1"), ("--lr", LR_KEY, "too small")),
    Case("cli-lr-nan", _argv(*P, *TRAIN, "--lr", "nan"), ("--lr", LR_KEY, "finite")),
    # item 5: zero epochs / zero batch were a zero-filled run with exit 0 / a ZeroDivisionError traceback
    Case("cli-epochs-zero", _argv(*P, *TRAIN, "--epochs", "0"), ("--epochs", "train.epochs", "too small")),
    Case(
        "cli-batch-size-zero",
        _argv(*P, *TRAIN, "--batch-size", "0"),
        ("--batch-size", "train.batch_size", "too small"),
    ),
    # item 7 and item 8 (the pickle)
    Case("params-not-utf8", _non_utf8, ("params.yaml", "line 2", "0xef", "UTF-8")),
    Case("weights-malicious-pickle", _malicious_pickle, ("weights.pt", "weights_only", ".safetensors")),
    # further bad inputs of a careless collaborator
    Case("params-duplicate-key", _duplicate_key, ("params.yaml", "'lr'", "twice", "keep one")),
    Case("params-lr-1e-3-is-text", _lr_text("1e-3"), (LR_KEY, "'1e-3'", "1.0e-3")),
    Case(
        "set-epochs-float",
        _argv(*P, "--set", "train.epochs=2.0", *TRAIN),
        ("train.epochs", "integer", "whole number"),
    ),
    Case("cli-epochs-negative", _argv(*P, *TRAIN, "--epochs", "-1"), ("--epochs", "train.epochs")),
    Case("cli-lr-zero", _argv(*P, *TRAIN, "--lr", "0"), ("--lr", LR_KEY, "must be > 0")),
    Case("cli-lr-inf", _argv(*P, *TRAIN, "--lr", "inf"), ("--lr", LR_KEY, "finite")),
    Case(
        "set-nan-inside-a-list",
        _argv(*P, "--set", "train.crop_scale=[0.5, .nan]", *TRAIN),
        ("train.crop_scale.1", "finite"),
    ),
    Case(
        "cli-seed-negative",
        _argv(*P, "train", "--dataset", "demo_shapes", "--method", "bias", "--seed", "-1"),
        ("--seed", "≥ 0"),
    ),
    Case("params-top-level-list", _list_params, ("extra.yaml", "mapping")),
    Case("params-layer-without-keys", _empty_layer, ("extra.yaml", "no keys")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_number_or_params_file_is_one_line_and_the_finished_run_is_intact(
    case: Case, finished_ws: Workspace, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ws = finished_ws.copy(tmp_path / "ws")
    argv = case.prepare(ws.path)
    before = snapshot(ws.path)
    code, err = _main(ws.path, argv, capfd)
    assert code == 2, err
    one_error_line(err, case.names, fix_marks=("—",))
    after = snapshot(ws.path)
    assert after == before, f"the failed command wrote to the workspace: {describe_diff(before, after)}"
    assert not (ws.path / "PWNED").exists()


def test_a_bad_few_shot_label_leaves_the_finished_run(
    finished_ws: Workspace, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A train label of 99 (10 classes), in the split and its few-shot subset alike: the job fails, and
    the finished run's outputs are untouched (0faf963 failed with an IndexError in the first step, after
    DVCLive had emptied dvclive/).

    (The label check itself belongs to the split loader; what this test holds is the order: whatever
    fails once the job has started, nothing of the finished run is deleted or rewritten.)
    """
    ws = finished_ws.copy(tmp_path / "ws")
    raw_path = ws.path / "data/raw/demo_shapes.json"
    few_path = ws.path / "data/splits/demo_shapes/shot4_seed1.json"
    raw, few = json.loads(raw_path.read_text()), json.loads(few_path.read_text())
    image = few["train"][0][0]
    for entry in (*raw["train"], *few["train"]):
        if entry[0] == image:
            entry[1] = 99
    raw_path.write_text(json.dumps(raw))
    with contextlib.suppress(Exception):  # the subset `promptbias split` would write from this split
        from promptbias.data.splits import make_fewshot

        few = make_fewshot(raw, 4, 1)
    few_path.write_text(json.dumps(few))
    before = _finished_outputs(ws.path)
    code, err = _main(ws.path, [*P, *TRAIN], capfd)
    assert code != 0, err
    assert _finished_outputs(ws.path) == before, "the failed job touched the finished run's outputs"
    assert not (ws.path / RUN / ".dvclive.staging").exists()


def test_a_failure_at_epoch_2_leaves_the_finished_run(
    finished_ws: Workspace, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new run (another lr) whose disk fills at epoch 2: the finished outputs survive, the rerun completes."""
    import promptbias.io

    ws = finished_ws.copy(tmp_path / "ws")
    before = _finished_outputs(ws.path)
    monkeypatch.setattr(promptbias.io, "_fault_hits", 0)
    monkeypatch.setenv("PROMPTBIAS_FAULT", "epoch2.step1.:enospc")
    code, err = _main(ws.path, [*P, *TRAIN, "--lr", "0.02"], capfd)
    assert code == 2 and "no space left" in err, err
    assert _finished_outputs(ws.path) == before, "the failed run touched the finished run's outputs"
    assert not (ws.path / RUN / ".dvclive.staging").exists()
    assert (ws.path / RUN / "checkpoint.pt").is_file()  # epoch 1 of the new job, to resume from

    monkeypatch.delenv("PROMPTBIAS_FAULT")
    code, err = _main(ws.path, [*P, *TRAIN, "--lr", "0.02"], capfd)
    assert code == 0, err
    assert "resuming" in err
    record = json.loads((ws.path / RUN / "train.json").read_text())
    assert record["epochs_completed"] == 3 and record["params"]["methods.bias"]["lr"] == 0.02
    assert _live_losses(ws.path) == pytest.approx([h["loss"] for h in record["history"]])


def _live_losses(ws: Path) -> list[float]:
    rows = list(
        csv.DictReader(
            (ws / RUN / "dvclive/plots/metrics/train/loss.tsv").read_text().splitlines(), delimiter="\t"
        )
    )
    return [float(r["loss"]) for r in rows]


def test_a_kill_while_dvclive_is_swapped_in_is_recovered(
    finished_ws: Workspace, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL between the two renames of the DVCLive swap: the finished run's logs are put back on the next
    start, and the rerun publishes logs that match its train.json (no second folder left behind)."""
    ws = finished_ws.copy(tmp_path / "ws")
    old_record = (ws.path / RUN / "train.json").read_bytes()
    res = run_cli(ws, sub_env(PROMPTBIAS_FAULT="dvclive.swap:kill"), *TRAIN, "--lr", "0.02")
    assert res.returncode == -signal.SIGKILL, res.stderr
    run = ws.path / RUN
    assert not (run / "dvclive").exists() and (run / ".dvclive.old").is_dir()  # killed mid-swap
    assert (run / "train.json").read_bytes() == old_record  # not complete: train.json comes last

    code, err = _main(ws.path, [*P, *TRAIN, "--lr", "0.02"], capfd)
    assert code == 0, err
    record = json.loads((run / "train.json").read_text())
    assert record["params"]["methods.bias"]["lr"] == 0.02
    assert _live_losses(ws.path) == pytest.approx([h["loss"] for h in record["history"]])
    assert not (run / ".dvclive.old").exists() and not (run / ".dvclive.staging").exists()
