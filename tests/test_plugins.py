"""Adding a method or a probe is one module plus one registration: a toy method and a toy probe from a
plugin module (``PROMPTBIAS_PLUGINS``) reach the generated dvc.yaml, the Snakemake DAG and the report."""

from __future__ import annotations

import json
import os
import sys

import pytest
import yaml
from workflow_helpers import REPO, project_copy, snakemake_jobs

from promptbias import catalog, config
from tests.workspace import Workspace

TOY = {
    "sweep": {"methods": ["zeroshot", "toyshift"]},
    "methods": {"toyshift": {"lr": 0.5, "depth_vision": 2}},
    "probes": {"kinds": ["attention_entropy", "toy_norms"], "methods": ["zeroshot", "toyshift"]},
}


@pytest.fixture
def toy_plugin(monkeypatch):
    """The plugin named in PROMPTBIAS_PLUGINS (here and in every subprocess), the catalogs reloaded."""
    monkeypatch.setenv(catalog.PLUGINS_ENV, "tests.toy_plugin")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    catalog.load_plugins.cache_clear()
    config.params_schema.cache_clear()
    yield
    from promptbias.methods.base import METHODS
    from promptbias.probes.registry import PROBES

    for registry in (catalog.METHOD_INFO, catalog.PROBE_INFO, METHODS, PROBES):  # gone for later tests
        registry.pop("toyshift", None), registry.pop("toy_norms", None)
    sys.modules.pop("tests.toy_plugin", None)
    catalog.load_plugins.cache_clear()
    config.params_schema.cache_clear()


def test_a_toy_method_and_probe_reach_dvc_yaml_snakemake_and_the_report(toy_plugin, tmp_path, monkeypatch):
    proj = project_copy(tmp_path / "proj")
    (proj / "config/toy.yaml").write_text(yaml.safe_dump(TOY))
    files = ["params.yaml", "config/demo.yaml", "config/toy.yaml"]

    # dvc.yaml: the toy's train/evaluate/probe stages, its params section, the probe's outputs
    from promptbias.pipeline import Pipeline
    from promptbias.pipeline.dvc import dvc_stages

    monkeypatch.chdir(proj)
    stages = dvc_stages(Pipeline.from_files(files))
    train = stages["train-demo_shapes-toyshift-s1"]
    assert train["params"] == [*train["params"][:-1], {"config/toy.yaml": ["methods.toyshift"]}]
    assert "train-demo_shapes-zeroshot-s1" not in stages  # trains: False for zero-shot
    probe_outs = stages["probe-demo_shapes-toyshift-s1"]["outs"]
    assert "probes/demo_shapes/toyshift/seed1/toy_norms.parquet" in probe_outs

    # the Snakemake DAG, planned in a subprocess that loads the plugin from the environment
    jobs = snakemake_jobs(proj, "all", ["config/demo.yaml", "config/toy.yaml"])
    outputs = {o for j in jobs for o in j["output"]}
    assert "runs/demo_aerial/toyshift/seed2/params.safetensors" in outputs
    assert "probes/demo_aerial/toyshift/seed1/toy_norms.json" in outputs

    # the report: train, evaluate, probe and render the toy on the tiny CLIP (in this process)
    ws = Workspace.create(tmp_path / "ws", datasets=["demo_shapes"], overrides=TOY)
    for args in (
        ("train", "--dataset", "demo_shapes", "--method", "toyshift", "--seed", "1"),
        *(
            ("evaluate", "--dataset", "demo_shapes", "--method", m, "--seed", "1")
            for m in ("zeroshot", "toyshift")
        ),
        *(
            (
                "probe",
                "attention_entropy",
                "toy_norms",
                "--dataset",
                "demo_shapes",
                "--method",
                m,
                "--seed",
                "1",
            )
            for m in ("zeroshot", "toyshift")
        ),
        ("aggregate",),
        ("render",),
    ):
        ws.cli(*args)
    trained = json.loads((ws.path / "runs/demo_shapes/toyshift/seed1/train.json").read_text())
    assert trained["parameters"] == 2 * 64 and trained["params"]["methods.toyshift"]["lr"] == 0.5
    runs = (ws.path / "results/tables/runs.md").read_text()
    toy_row = next(line for line in runs.splitlines() if "`toyshift`" in line)
    assert "not run" not in toy_row and "toy_norms" in toy_row
    assert "`toyshift`" in (ws.path / "results/report.html").read_text().replace("<code>", "`").replace(
        "</code>", "`"
    )


def test_an_unknown_plugin_module_is_one_line(monkeypatch):
    monkeypatch.setenv(catalog.PLUGINS_ENV, "tests.no_such_plugin")
    catalog.load_plugins.cache_clear()
    try:
        with pytest.raises(config.UserError, match=r"PROMPTBIAS_PLUGINS: cannot import tests.no_such_plugin"):
            catalog.methods()
    finally:
        catalog.load_plugins.cache_clear()
