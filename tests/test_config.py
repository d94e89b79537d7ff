"""Bad params fail with one line that names the key path and the fix (CLI, library and Snakefile share it)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from workflow_helpers import REPO

from promptbias.cli import main
from promptbias.config import load_params
from promptbias.errors import UserError

BASE = str(REPO / "params.yaml")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train: {epocs: 3}", "train.epocs: unknown key — did you mean 'epochs'?"),
        ("colour: red", "colour: unknown key"),
        ("train: {epochs: ten}", "train.epochs: 'ten' should be of type integer"),
        ("sweep: {seeds: []}", "sweep.seeds: the list is empty — give at least 1 item"),
        ("data: {shots: 0}", "data.shots: 0 is too small (must be ≥ 1)"),
        ("data: {shots: -4}", "data.shots: -4 is too small"),
        ("sweep: {datasets: [imagenet, mnist]}", "sweep.datasets.1: 'mnist' is not one of"),
        ("sweep: {methods: [zeroshot, lora]}", "sweep.methods.1: 'lora' is not valid"),
        ("methods: {prompt: {lr: 0}}", "methods.prompt.lr: 0 is too small (must be > 0)"),
        (
            "demo: {enabled: true, pretrain_stepz: 3}",
            "demo.pretrain_stepz: unknown key — did you mean 'pretrain_steps'?",
        ),
    ],
)
def test_bad_params_fail_with_key_path_and_fix(tmp_path, override, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_text(override + "\n")
    with pytest.raises(UserError) as info:
        load_params([BASE, str(bad)])
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {shots: 0}\n")
    with pytest.raises(SystemExit) as info:
        main(["--params", BASE, "--params", str(bad), "validate"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "data.shots" in err[0]


def test_params_and_demo_config_are_valid():
    cfg = load_params([BASE, str(REPO / "config/demo.yaml")])
    assert cfg["device"] == "cpu" and cfg["demo"]["enabled"] is True
    assert cfg["model"]["pretrained"] == f"{cfg['demo']['clip_dir']}/open_clip_model.safetensors"
    assert load_params([BASE])["sensitivity"]["enabled"] is False  # the grid is opt-in


def test_set_override_is_validated():
    with pytest.raises(UserError, match=r"train.batch_size: 0 is too small"):
        load_params([BASE], ["train.batch_size=0"])


def test_click_runner_validate_ok():
    res = CliRunner().invoke(
        __import__("promptbias.cli", fromlist=["cli"]).cli, ["--params", BASE, "validate"]
    )
    assert res.exit_code == 0
