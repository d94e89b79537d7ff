"""The findings table (``promptbias render --only findings``): verdicts computed from the run's tables.

Synthetic metrics and probe tables (tests/test_render.py's workspace) are rendered, then one input table is
changed: the measured value must follow it and the verdict flip. Also: a finding whose dataset is not in
the sweep says "not measured in this run"; the defaults the table states are params.yaml's; the report
shows the table.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from promptbias.render.findings import DEFAULTS, NO, NOT_MEASURED, YES
from tests.test_render import REPO, _render, _workspace
from tests.workspace import strict_json


def _findings(tmp: Path) -> pd.DataFrame:
    return pd.read_csv(tmp / "results/tables/findings.csv").set_index("finding")


def _set(path: Path, variant: str, key: str, value: float) -> None:
    df = pd.read_parquet(path)
    df.loc[(df["variant"] == variant) & (df["key"] == key), "value"] = value
    df.to_parquet(path, index=False)


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    datasets = ["demo_shapes", "demo_aerial"]
    params = _workspace(tmp_path, datasets, datasets, datasets, [])
    return tmp_path, params


def test_a_changed_probe_table_changes_the_verdict(run):
    tmp, params = run
    tables = [
        tmp / f"probes/{d}/prompt/seed1/bias_decomposition.parquet" for d in ("demo_shapes", "demo_aerial")
    ]
    for path in tables:
        _set(path, "prompt_tokens", "explained_share", 0.9)  # vision and text
    _render(params, "--only", "findings")
    assert _findings(tmp).loc["bias_decomposition", "verdict"] == YES
    assert _findings(tmp).loc["bias_decomposition", "value"] == pytest.approx(0.9)

    _set(tables[0], "prompt_tokens", "explained_share", 0.05)  # one dataset's prompts are hardly a bias
    _render(params, "--only", "findings")
    row = _findings(tmp).loc["bias_decomposition"]
    assert row["value"] == pytest.approx((0.05 + 0.9) / 2) and row["verdict"] == NO
    assert "demo_shapes: vision 0.050" in row["detail"]


def test_the_eos_shift_is_measured_against_the_frozen_clip_rows(run):
    tmp, params = run
    for d in ("demo_shapes", "demo_aerial"):
        path = tmp / f"probes/{d}/prompt/seed1/attention_stats.parquet"
        for variant, sos, prompt, category in (("clip_eos_row", 0.6, 0.1, 0.2), ("eos_row", 0.4, 0.3, 0.21)):
            for key, value in (("sos", sos), ("prompt", prompt), ("category", category)):
                _set(path, variant, key, value)
    _render(params, "--only", "findings")
    row = _findings(tmp).loc["eos_attention"]
    assert row["verdict"] == YES and row["value"] == pytest.approx(-0.2)
    path = tmp / "probes/demo_aerial/prompt/seed1/attention_stats.parquet"
    _set(path, "eos_row", "category", 0.5)  # category attention no longer stays: mean Δ = (0.01 + 0.3) / 2
    _render(params, "--only", "findings")
    assert _findings(tmp).loc["eos_attention", "verdict"] == NO


def test_accuracy_findings_follow_the_summary_and_need_the_uninformative_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    datasets = ["demo_shapes", "demo_textures"]
    params = _workspace(tmp_path, datasets, datasets, [], [])
    _render(params, "--only", "findings")
    runs = strict_json(tmp_path / "metrics/summary.json")["runs"]
    gain = {d: runs[f"{d}/bias"]["accuracy_mean"] - runs[f"{d}/prompt"]["accuracy_mean"] for d in datasets}
    t = _findings(tmp_path)
    assert t.loc["bias_vs_prompt", "value"] == pytest.approx(sum(gain.values()) / 2)
    assert t.loc["bias_vs_prompt", "verdict"] == (YES if sum(gain.values()) / 2 >= 0 else NO)
    assert t.loc["uninformative_names", "value"] == pytest.approx(gain["demo_textures"])
    assert t.loc["uninformative_names", "verdict"] == (YES if gain["demo_textures"] >= 5 else NO)
    assert t.loc["cls_foreground", "verdict"] == NOT_MEASURED

    cfg = yaml.safe_load(params.read_text())
    cfg["sweep"]["datasets"] = ["demo_shapes"]  # the uninformative dataset is not in this run
    params.write_text(yaml.safe_dump(cfg))
    _render(params, "--only", "findings")
    row = _findings(tmp_path).loc["uninformative_names"]
    assert row["verdict"] == NOT_MEASURED and "is in sweep.datasets" in row["detail"]
    assert pd.isna(row["value"])


def test_the_report_shows_the_findings_table(run):
    tmp, params = run
    _render(params, "--only", "findings")
    html = (tmp / "results/report.html").read_text()
    section = html[html.index('id="sec-findings"') :]
    assert "<table>" in section.split("</section>")[0]
    md = (tmp / "results/tables/findings.md").read_text()
    assert md.count("\n| ") == 1 + 7  # the header and one row per finding


def test_the_stated_defaults_are_those_of_params_yaml():
    assert yaml.safe_load((REPO / "params.yaml").read_text())["render"]["findings"] == DEFAULTS
