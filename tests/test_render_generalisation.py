"""The generalisation protocols' render pieces: published values, the base vs novel probe figure, the
domain-generalisation block, and the demo-generalization config rendered end to end.

Metrics and probe tables are synthetic (the helpers of tests/test_render.py). Domain-generalisation runs
are written into metrics/summary.json directly: the render side works from the view ids alone
(``<variant>-from_imagenet``), whatever the evaluate matrix holds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from promptbias.aggregate import aggregate
from promptbias.config import load_params
from promptbias.data.registry import names
from promptbias.render import expected_outputs
from promptbias.render.published import (
    BASE2NOVEL,
    CROSS_DATASET,
    DOMAIN_GENERALISATION,
    IMAGENET_VARIANTS,
    PAPER_DATASETS,
    value,
    variant_key,
)
from tests.test_render import REPO, _cross_dataset_section, _params, _render, _write_metrics, _write_probes

VARIANTS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")


# ------------------------------------------------------------------------------- published values
def test_published_values_agree_with_themselves_and_name_our_datasets():
    """HM = 2BN/(B+N) and AVERAGE = the mean of the per-dataset values, to the printed rounding: a value
    copied into the wrong cell or the wrong dataset breaks one of these."""
    known = {*names(), "AVERAGE", *IMAGENET_VARIANTS}
    for row in BASE2NOVEL:
        assert set(row.values) <= known, row.method
        for key, (b, n, hm) in row.values.items():
            assert hm == pytest.approx(2 * b * n / (b + n), abs=0.011), (row.method, key)
        if set(row.values) >= set(PAPER_DATASETS):
            for i in (0, 1):
                mean = sum(row.values[d][i] for d in PAPER_DATASETS) / len(PAPER_DATASETS)
                assert row.values["AVERAGE"][i] == pytest.approx(mean, abs=0.011), row.method
    for rows, targets in (
        (CROSS_DATASET, set(PAPER_DATASETS) - {"imagenet"}),
        (DOMAIN_GENERALISATION, set(VARIANTS)),
    ):
        for row in rows:
            assert set(row.values) <= known
            have = [row.values[t][0] for t in targets if t in row.values]
            assert len(have) == len(targets), row.method
            assert row.values["AVERAGE"][0] == pytest.approx(sum(have) / len(have), abs=0.011), row.method
    every = (*BASE2NOVEL, *CROSS_DATASET, *DOMAIN_GENERALISATION)
    assert all(", via " in r.source.caption and r.source.label for r in every)  # each says where it was read
    assert {r.method for r in every} >= {"CLIP", "CoOp", "CoCoOp", "MaPLe"}  # the papers' names, not ours
    assert not {r.method for r in every} & {"zeroshot", "prompt", "bias"}


def test_published_values_map_onto_our_dataset_and_view_ids():
    coop, cocoop, maple = BASE2NOVEL[1], BASE2NOVEL[2], BASE2NOVEL[3]
    assert (coop.method, cocoop.method, maple.method) == ("CoOp", "CoCoOp", "MaPLe")
    assert value(maple, "eurosat") == (94.07, 73.23, 82.35)  # also the author's row in MaPLe issue #28
    assert value(coop, "oxford_flowers") == (97.60, 59.67, 74.06)  # the papers' Flowers102
    assert value(cocoop, "fgvc_aircraft") == (33.41, 23.71, 27.74)
    assert value(coop, "dtd-base") is None  # a class view is no dataset of the papers
    xd = {r.method: r for r in CROSS_DATASET}
    assert value(xd["CoCoOp"], "fgvc_aircraft-from_imagenet") == (22.94,)
    assert value(xd["MaPLe"], "imagenet") == (70.72,)  # the source's own accuracy
    dg = {r.method: r for r in DOMAIN_GENERALISATION}
    assert [variant_key(v) for v in ("imagenet_v2", "imagenetv2-from_imagenet", "imagenet_sketch")] == [
        "imagenetv2", "imagenetv2", "imagenet_sketch"]  # fmt: skip
    expected = {"imagenetv2": 64.07, "imagenet_sketch": 49.15, "imagenet_a": 50.90, "imagenet_r": 76.98}
    assert {v: value(dg["MaPLe"], f"{v}-from_imagenet")[0] for v in VARIANTS} == expected
    assert value(dg["CLIP"], "imagenet_a-from_imagenet") == (47.77,) and value(dg["CLIP"], "imagenet") is None


# ------------------------------------------------------------------------------- base vs novel probe figure
def _b2n_probes(tmp: Path, monkeypatch) -> tuple[Path, dict]:
    monkeypatch.chdir(tmp)
    params = _params(tmp, ["demo_shapes"], [])
    cfg = yaml.safe_load(params.read_text())
    cfg["protocols"] = ["fewshot", "base2novel"]
    params.write_text(yaml.safe_dump(cfg))
    cfg = load_params([str(params)])
    _write_metrics(["demo_shapes", "demo_shapes-base", "demo_shapes-novel"], cfg, random.Random(3))
    aggregate(cfg)
    rng = np.random.default_rng(1)
    for view in ("base", "novel"):
        for method in ("zeroshot", "prompt"):
            _write_probes(f"demo_shapes-{view}", method, rng, ["x.png"])
    path = tmp / "probes/demo_shapes-novel/prompt/seed1/bias_decomposition.parquet"
    df = pd.read_parquet(path)
    df.loc[
        (df["branch"] == "text") & (df["variant"] == "prompt_tokens") & (df["key"] == "explained_share"),
        "value",
    ] = 0.25
    df.to_parquet(path, index=False)
    return params, cfg


def test_base_vs_novel_probe_figure_draws_both_views_and_marks_a_missing_one(tmp_path, monkeypatch):
    from promptbias.render import base2novel_probes
    from promptbias.render.inputs import Inputs

    params, cfg = _b2n_probes(tmp_path, monkeypatch)
    curves, gaps = base2novel_probes.series(Inputs(cfg), "demo_shapes")
    assert not gaps
    for title, _, specs in base2novel_probes.PANELS:
        for view in ("base", "novel"):
            assert any((title, label, view) in curves for *_, label, _ in specs), (title, view)
    text = next(
        k
        for k in curves
        if k[0].startswith("explained") and k[1].startswith("text prompts") and k[2] == "novel"
    )
    layers, values = curves[text]
    assert list(layers) == [1, 2, 3] and np.allclose(values, 0.25)  # the novel view's own table
    assert not np.allclose(curves[(text[0], text[1], "base")][1], 0.25)  # the base view's, not the novel's
    eos = curves[("text: EOS attention", "EOS → prompt slots", "novel")]
    assert len(eos[0]) == 3  # head mean per layer
    assert {p.name for p in expected_outputs(cfg) if p.parent.name == "figures"} >= {
        "base2novel_probes.png", "base2novel_probes.pdf"}  # fmt: skip
    _render(params, "--only", "base2novel", "--only", "report")
    png = tmp_path / "results/figures/base2novel_probes.png"
    assert png.stat().st_size > 5000
    html = (tmp_path / "results/report.html").read_text()
    assert 'id="base2novel_probes"' in html and "base2novel_probes-table" in html

    for kind in ("bias_decomposition", "attention_stats"):  # the novel view's prompt tables go missing
        (tmp_path / f"probes/demo_shapes-novel/prompt/seed1/{kind}.parquet").unlink()
    curves, gaps = base2novel_probes.series(Inputs(cfg), "demo_shapes")
    assert not any(k[2] == "novel" and not k[1].startswith("CLIP") for k in curves)
    assert "probes/demo_shapes-novel/prompt/bias_decomposition.parquet: not run" in {str(g) for g in gaps}
    result = _render(params, "--only", "base2novel", "--only", "report")
    assert png.is_file() and "demo_shapes-novel/prompt/attention_stats.parquet" in result.output + (
        tmp_path / "results/report.html").read_text()  # fmt: skip


# ------------------------------------------------------------------------------- domain generalisation
def _summary(runs: dict[str, float]) -> None:
    """metrics/summary.json with one entry per ``<dataset id>/<method>``: mean accuracy, 3 seeds."""
    entries = {k: {"dataset": k.split("/")[0], "method": k.split("/")[1], "n_seeds": 3, "accuracy_mean": v,
                   "accuracy_std": 0.5} for k, v in runs.items()}  # fmt: skip
    Path("metrics").mkdir(exist_ok=True)
    Path("metrics/summary.json").write_text(json.dumps({"runs": entries}))


def _xd_params(tmp: Path, source: str, datasets: list[str]) -> tuple[Path, dict]:
    params = _params(tmp, datasets, [])
    cfg = yaml.safe_load(params.read_text())
    cfg["protocols"] = ["fewshot", "cross_dataset"]
    cfg["cross_dataset"] = _cross_dataset_section(cfg, source)
    params.write_text(yaml.safe_dump(cfg))
    return params, load_params([str(params)])


def test_cross_dataset_sets_domain_generalisation_targets_apart_from_the_view_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params, _ = _xd_params(tmp_path, "imagenet", ["imagenet", "dtd"])
    rng = random.Random(4)
    runs = {
        f"{d}/{m}": round(rng.uniform(30, 80), 2)
        for d in ("imagenet", "dtd")
        for m in ("zeroshot", "prompt", "bias")
    }
    runs |= {f"dtd-from_imagenet/{m}": round(rng.uniform(30, 80), 2) for m in ("prompt", "bias")}
    runs |= {f"{v}-from_imagenet/{m}": round(rng.uniform(30, 80), 2) for v in VARIANTS for m in ("zeroshot", "prompt", "bias")}  # fmt: skip
    _summary(runs)
    _render(params, "--only", "cross_dataset", "--only", "findings")

    t = pd.read_csv(tmp_path / "results/tables/cross_dataset.csv")
    assert list(zip(t["dataset"], t["role"], strict=True)) == [
        ("imagenet", "source"), ("dtd", "target"), ("AVERAGE", "targets"),
        *((v, "domain") for v in VARIANTS), ("AVERAGE", "domains")]  # fmt: skip
    t = t.set_index(["dataset", "role"])
    sketch = t.loc[("imagenet_sketch", "domain")]
    assert sketch["prompt_mean"] == runs["imagenet_sketch-from_imagenet/prompt"]
    # a variant has no plain (sweep) run: its zero-shot is the view's own
    assert sketch["zeroshot_mean"] == runs["imagenet_sketch-from_imagenet/zeroshot"]
    assert (sketch["published_maple"], sketch["published_clip"]) == (49.15, 46.15)
    assert t.loc[("imagenet_a", "domain"), "published_maple"] == 50.90  # -A and -R not swapped
    assert t.loc[("imagenet_r", "domain"), "published_coop"] == 75.21
    assert t.loc[("imagenetv2", "domain"), "published_cocoop"] == 64.07
    domains = t.loc[("AVERAGE", "domains")]
    assert domains["published_maple"] == 60.27  # all four variants: the published average
    assert domains["bias_mean"] == pytest.approx(sum(runs[f"{v}-from_imagenet/bias"] for v in VARIANTS) / 4)
    assert t.loc[("dtd", "target"), "published_coop"] == 41.92 and pd.isna(
        t.loc[("dtd", "target"), "published_clip"]
    )
    assert pd.isna(t.loc[("AVERAGE", "targets"), "published_coop"])  # one of the papers' ten targets only
    assert t.loc[("imagenet", "source"), "published_cocoop"] == 71.02
    md = (tmp_path / "results/tables/cross_dataset.md").read_text()
    head, dg = md.split("## Domain generalisation")
    assert "| DTD | target |" in head and "ImageNet-Sketch" not in head
    assert (
        "| ImageNet-Sketch | domain |" in dg
        and "**CoCoOp T3** = CoCoOp (Zhou et al., CVPR 2022), Table 3" in dg
    )
    assert (
        "**CoCoOp T2** = CoCoOp (Zhou et al., CVPR 2022), Table 2; **MaPLe T2** = MaPLe (Khattak et al., "
        "CVPR 2023), Table 2, via deep-diver/ai-paper-reviewer" in head
    )
    f = pd.read_csv(tmp_path / "results/tables/findings.csv").set_index("finding").loc["dataset_transfer"]
    assert f["value"] == pytest.approx(runs["dtd-from_imagenet/bias"] - runs["dtd/zeroshot"])  # targets only

    del runs["imagenet_r-from_imagenet/prompt"]  # one variant incomplete: no published average, a marked gap
    _summary(runs)
    result = _render(params, "--only", "cross_dataset", "--only", "report")
    t = pd.read_csv(tmp_path / "results/tables/cross_dataset.csv").set_index(["dataset", "role"])
    assert (
        pd.isna(t.loc[("AVERAGE", "domains"), "prompt_mean"])
        and t.loc[("AVERAGE", "domains"), "published_maple"] == 60.27
    )
    assert (
        "Domain generalisation / ImageNet-R / prompt"
        in result.output + (tmp_path / "results/report.html").read_text()
    )


def test_cross_dataset_without_imagenet_as_source_shows_no_published_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params, _ = _xd_params(tmp_path, "dtd", ["dtd", "eurosat"])
    _summary({"dtd/zeroshot": 40.0, "dtd/prompt": 60.0, "eurosat/zeroshot": 45.0, "eurosat-from_dtd/prompt": 41.0,
              "eurosat-from_dtd/bias": 42.0, "dtd/bias": 61.0})  # fmt: skip
    _render(params, "--only", "cross_dataset")
    t = pd.read_csv(tmp_path / "results/tables/cross_dataset.csv")
    assert t.filter(like="published_").isna().all().all()  # the papers transfer from ImageNet only
    assert "the papers' source is ImageNet" in (tmp_path / "results/tables/cross_dataset.md").read_text()
    assert "domain" not in set(t["role"])


# ------------------------------------------------------------------------------- the demo-generalization path
def test_demo_generalization_config_renders_the_new_pieces(tmp_path, monkeypatch):
    """config/demo.yaml + config/demo-generalization.yaml: every evaluated run and the class views' probes
    (synthetic), then render: the base vs novel figure is an output, a DVC image plot and in the report."""
    from promptbias.pipeline.dvc import figure_plots
    from promptbias.pipeline.plan import Pipeline
    from promptbias.pipeline.spec import evaluate_matrix

    monkeypatch.chdir(tmp_path)
    files = [str(REPO / f) for f in ("params.yaml", "config/demo.yaml", "config/demo-generalization.yaml")]
    cfg = load_params(files)
    assert {"base2novel", "cross_dataset"} <= set(cfg["protocols"])
    rng = random.Random(5)
    for w in evaluate_matrix(cfg):
        path = Path("metrics") / w["dataset"] / w["method"] / f"seed{w['seed']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        acc = round(rng.uniform(20, 90), 2)
        path.write_text(json.dumps({"dataset": w["dataset"], "method": w["method"], "seed": int(w["seed"]),
                                    "accuracy": acc, "macro_accuracy": acc, "val_accuracy": acc, "n_test": 50,
                                    "n_classes": 5, "status": "ok"}))  # fmt: skip
    aggregate(cfg)
    nrng = np.random.default_rng(2)
    for d in cfg["sweep"]["datasets"]:
        for view in ("base", "novel"):
            for m in cfg["probes"]["methods"]:
                _write_probes(f"{d}-{view}", m, nrng, ["x.png"])
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(cfg))
    only = ("base2novel", "cross_dataset", "findings", "report")
    _render(params, *(arg for name in only for arg in ("--only", name)))

    figure = Path("results/figures/base2novel_probes.png")
    assert figure in expected_outputs(cfg) and figure.stat().st_size > 5000
    assert str(figure) in figure_plots(Pipeline.from_files(files))  # an image plot of the generated dvc.yaml
    b2n = pd.read_csv("results/tables/base2novel.csv")
    assert (b2n["kind"] == "ours").all() and b2n["hm"].notna().all()  # demo datasets: nothing published
    assert "No published values" in Path("results/tables/base2novel.md").read_text()
    xd = pd.read_csv("results/tables/cross_dataset.csv")
    assert list(xd["role"]) == ["source", "target", "targets"]  # no ImageNet variant on the demo
    html = Path("results/report.html").read_text()
    for anchor in (
        'id="base2novel_probes"',
        "base2novel-table",
        "base2novel_probes-table",
        "cross_dataset-table",
    ):
        assert anchor in html
    findings = set(pd.read_csv("results/tables/findings.csv")["finding"])
    assert {"novel_transfer", "dataset_transfer"} <= findings
    assert "Base-to-novel / " not in html  # every view ran: no gap of the protocol's own
