"""``promptbias render`` end to end on synthetic metrics and probe tables (docs/interfaces.md formats).

The metrics go through the real ``promptbias.aggregate`` (so Table 1 is checked against what aggregate
wrote); the probe tables follow the tidy contract with the keys/variants the probes write. A dataset
that was never run, a probe that is missing and an unreadable parquet must all leave marked gaps.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from promptbias.aggregate import aggregate
from promptbias.cli import cli
from promptbias.config import grid_method_ids, load_params
from promptbias.errors import UserError
from promptbias.render import expected_outputs
from promptbias.render.paper import PAPER_TABLE1
from tests.workspace import strict_json

REPO = Path(__file__).resolve().parents[1]
L, H, G, P = 3, 2, 4, 1  # layers, heads, patch grid side, vision prompts (small: fast figures)


def _params(tmp: Path, datasets: list[str], sens_datasets: list[str]) -> Path:
    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg["sweep"]["datasets"] = datasets
    cfg["sensitivity"] = {"enabled": True, "datasets": sens_datasets, "depths": [1, 3], "n_ctx": [1, 2]}
    cfg["probes"]["seeds"] = [1]
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _write_metrics(datasets: list[str], cfg: dict, rng: random.Random) -> None:
    for ds in datasets:
        for m in list(cfg["sweep"]["methods"]) + (
            grid_method_ids(cfg) if ds in cfg["sensitivity"]["datasets"] else []
        ):
            for s in cfg["sweep"]["seeds"]:
                acc = round(rng.uniform(40, 90), 2)
                rec = {"dataset": ds, "method": m, "seed": s, "accuracy": acc, "macro_accuracy": acc - 1,
                       "val_accuracy": round(rng.uniform(40, 90), 2), "n_test": 100, "n_classes": 4, "status": "ok"}  # fmt: skip
                path = Path("metrics") / ds / m / f"seed{s}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(rec))


def _rows(ds: str, method: str, probe: str, rows: list[tuple]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["branch", "layer", "head", "variant", "key", "value"])
    df.insert(0, "probe", probe)
    df.insert(0, "seed", 1)
    df.insert(0, "method", method)
    df.insert(0, "dataset", ds)
    df["n"] = 8
    return df


def _per_head(
    branch: str, variant: str, key: str, rng: np.random.Generator, scale: float = 1.0
) -> list[tuple]:
    out = []
    for layer in range(L):
        vals = rng.uniform(0.2, 1.0, H) * scale
        out += [(branch, layer, h, variant, key, float(v)) for h, v in enumerate(vals)]
        out.append((branch, layer, -1, variant, key, float(vals.mean())))
    return out


def _write_probes(ds: str, method: str, rng: np.random.Generator, raw_ids: list[str]) -> None:
    out = Path("probes") / ds / method / "seed1"
    out.mkdir(parents=True, exist_ok=True)
    prompted = method == "prompt"
    n_ctx, n_vp = (1, P) if prompted else (0, 0)
    tables: dict[str, list[tuple]] = {k: [] for k in ("relevancy", "attention_stats", "attention_distance",
                                                      "attention_entropy", "maps", "bias_decomposition")}  # fmt: skip
    rel = tables["relevancy"]
    for j in range(6):
        rel.append(("text", -1, -1, "norm", f"pos_{j}", float(rng.uniform(0, 0.3))))
    rel += [("text", -1, -1, "norm", f"ctx_{k + 1}", 0.1) for k in range(n_ctx)]
    for g in ("sos", "prompt", "template", "category", "period"):
        rel.append(("text", -1, -1, "norm", g, 0.2 if g != "prompt" or prompted else 0.0))
    rel += [("vision", -1, -1, "norm", f"patch_{i}", float(rng.uniform(0, 0.1))) for i in range(G * G)]
    rel += [("vision", -1, -1, "norm", f"prompt_{k}", 0.2) for k in range(n_vp)]
    rel += [
        ("vision", -1, -1, "norm", "patches", 0.8),
        ("vision", -1, -1, "norm", "prompts", 0.2 if prompted else 0.0),
    ]
    st = tables["attention_stats"]
    for variant in ("eos_row", "clip_eos_row"):
        for g in ("sos", "prompt", "template", "category", "period", "eos"):
            st += _per_head("text", variant, g, rng, 1 / 6)
    for variant in ("cls_row", "clip_cls_row"):
        for g in ("cls", "patches", "prompts"):
            st += _per_head("vision", variant, g, rng, 1 / 3)
    dist = tables["attention_distance"]
    for variant in ("clip", "wo_prompt", "w_prompt", "clip_full"):
        dist += _per_head("vision", variant, "mad_px", rng, 30.0)
    dist.append(("vision", -1, -1, "reference", "uniform_px", 25.0))
    ent = tables["attention_entropy"]
    for variant in (
        "all_rows",
        "cls_row",
        "clip_all_rows",
        "clip_cls_row",
        "wo_prompt_all_rows",
        "wo_prompt_cls_row",
    ):
        ent += _per_head("vision", variant, "entropy", rng, 2.5)
        ent += _per_head("text", variant.replace("cls", "eos"), "entropy", rng, 2.0)
    ent.append(("vision", -1, -1, "reference", "log_T_no_prompts", float(np.log(1 + G * G))))
    tables["maps"] = [("vision", layer, -1, "method_vs_clip", "cls_map_corr", 0.9) for layer in range(L)]
    bd = tables["bias_decomposition"]
    keysets = [
        ("vision", "prompt_tokens"),
        ("vision", "prompt_cls"),
        ("text", "prompt_tokens"),
        ("text", "prompt_eos"),
    ]
    for branch, variant in ([*keysets] if prompted else []) + [("text", "sos_tokens"), ("text", "sos_eos")]:
        for layer in range(L):
            for key in ("explained_share", "bias_norm", "rms_norm", "update_rms_norm", "key_mass"):
                bd.append((branch, layer, -1, variant, key, float(rng.uniform(0.1, 1.0))))
    if method == "bias":
        bd += [
            (b, layer, -1, "learned_bias", "norm", float(rng.uniform(0, 1)))
            for b in ("vision", "text")
            for layer in range(L)
        ]
    for kind, rows in tables.items():
        _rows(ds, method, kind, rows).to_parquet(out / f"{kind}.parquet", index=False)
        (out / f"{kind}.json").write_text(json.dumps({"probe": kind}))
    n, R = len(raw_ids), 2
    np.savez_compressed(
        out / "maps.npz",
        cls_clip=rng.random((n, R, L, G, G)).astype(np.float32),
        cls_method=rng.random((n, R, L, G, G)).astype(np.float32),
        prompt_similarity=rng.random((n, R, L, n_vp, G, G)).astype(np.float32),
        image_ids=np.asarray(raw_ids, dtype=str),
        labels=np.zeros(n, dtype=np.int64),
        rotations=np.asarray([0, 90]),
        grid=np.asarray([G, G]),
    )


def _write_images(ds: str) -> list[str]:
    from PIL import Image

    ids = ["test/a.png", "test/b.png"]
    for i, rel in enumerate(ids):
        path = Path("data/raw") / ds / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = np.zeros((40, 32, 3), np.uint8)
        arr[5:20, 8 + i : 24, 0] = 255
        Image.fromarray(arr).save(path)
    return ids


def _workspace(tmp: Path, datasets: list[str], run: list[str], probed: list[str], sens: list[str]) -> Path:
    params = _params(tmp, datasets, sens)
    cfg = load_params([str(params)])
    _write_metrics(run, cfg, random.Random(0))
    aggregate(cfg)
    rng = np.random.default_rng(0)
    for ds in probed:
        ids = _write_images(ds)
        for m in cfg["probes"]["methods"]:
            _write_probes(ds, m, rng, ids[:1])  # one map image: fig6 stays small
    return params


def _render(params: Path, *args: str):
    result = CliRunner().invoke(cli, ["--params", str(params), "render", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo world's sweep fully run (metrics, grid and probes), rendered once."""
    tmp = tmp_path_factory.mktemp("render_demo")
    mp = pytest.MonkeyPatch()
    mp.chdir(tmp)
    datasets = ["demo_shapes", "demo_textures"]
    params = _workspace(tmp, datasets, datasets, datasets, ["demo_shapes"])
    result = _render(params)
    yield tmp, params, load_params([str(params)]), result
    mp.undo()


def test_every_expected_output_exists_and_is_not_empty(demo):
    tmp, _, cfg, _ = demo
    outputs = expected_outputs(cfg)
    assert {p.suffix for p in outputs} >= {".png", ".pdf", ".md", ".csv", ".tex", ".html"}
    for path in outputs:
        assert (tmp / path).is_file(), path
        assert (tmp / path).stat().st_size > 0, path
    assert not list((tmp / "results").rglob(".*.tmp")), "a temporary file was left behind"


def test_the_dvc_metrics_are_one_short_file_per_dataset_and_method(demo):
    """`dvc metrics show` reads these: one row per dataset × method, five short keys, two decimals."""
    tmp, _, cfg, _ = demo
    runs = strict_json(tmp / "metrics/summary.json")["runs"]
    files = sorted(p.relative_to(tmp).as_posix() for p in (tmp / "metrics").glob("*/*.json"))
    assert files == sorted(f"metrics/{key}.json" for key in runs)  # every evaluated pair, nothing else
    for key, entry in runs.items():
        got = strict_json(tmp / f"metrics/{key}.json")
        assert got == {
            "acc": round(entry["accuracy_mean"], 2),
            "std": round(entry["accuracy_std"], 2),
            "macro": round(entry["macro_accuracy_mean"], 2),
            "val": round(entry["val_accuracy_mean"], 2),
            "seeds": len(cfg["sweep"]["seeds"]),
        }, key


def test_table1_numbers_equal_the_aggregated_metrics(demo):
    tmp, _, _, _ = demo
    summary = strict_json(tmp / "metrics/summary.json")
    runs, best = summary["runs"], summary["optimal"]
    t = pd.read_csv(tmp / "results/tables/table1.csv", keep_default_na=False, na_values=[""])
    rows = t.set_index("dataset")
    for ds in ("demo_shapes", "demo_textures"):
        for prefix, method in (("clip", "zeroshot"), ("prompt", "prompt"), ("bias", "bias")):
            assert rows.loc[ds, f"{prefix}_mean"] == pytest.approx(
                runs[f"{ds}/{method}"]["accuracy_mean"], abs=1e-9
            )
            assert rows.loc[ds, f"{prefix}_std"] == pytest.approx(
                runs[f"{ds}/{method}"]["accuracy_std"], abs=1e-9
            )
        assert pd.isna(rows.loc[ds, "clip_paper"])  # demo datasets have no published values
    assert rows.loc["demo_shapes", "optimal_val_method"] == best["demo_shapes"]["val_selected"]
    assert rows.loc["demo_shapes", "optimal_val_mean"] == pytest.approx(
        best["demo_shapes"]["val_selected_accuracy_mean"]
    )
    assert rows.loc["demo_shapes", "optimal_test_mean"] == pytest.approx(
        best["demo_shapes"]["test_selected_accuracy_mean"]
    )
    avg = (runs["demo_shapes/bias"]["accuracy_mean"] + runs["demo_textures/bias"]["accuracy_mean"]) / 2
    assert rows.loc["AVERAGE", "bias_mean"] == pytest.approx(avg)
    md = (tmp / "results/tables/table1.md").read_text()
    assert (
        f"{runs['demo_shapes/prompt']['accuracy_mean']:.2f} ± {runs['demo_shapes/prompt']['accuracy_std']:.2f}"
        in md
    )
    header = next(line for line in md.splitlines() if line.startswith("| Dataset"))
    assert "paper" not in header and "Δ" not in header and "publishes no values" in md  # demo: none published
    tex = (tmp / "results/tables/table1.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"Demo shapes" in tex


def test_report_embeds_every_figure_with_a_caption(demo):
    tmp, _, cfg, _ = demo
    html = (tmp / "results/report.html").read_text()
    pngs = [p for p in expected_outputs(cfg) if p.suffix == ".png"]
    assert html.count("data:image/png;base64,") == len(pngs)
    assert html.count("<figcaption>") == len(pngs)
    assert "<table>" in html and "Table 1" in html
    assert html.count("importance of the bias") == 1  # the item's title, not the table file's heading again


def test_render_only_and_list(demo):
    tmp, params, _, _ = demo
    before = (tmp / "results/figures/sensitivity.png").stat().st_mtime_ns
    listing = _render(params, "--list").output
    assert "results/tables/table1.csv" in listing and "fig6" in listing
    _render(params, "--only", "table1", "--no-report")
    assert (tmp / "results/figures/sensitivity.png").stat().st_mtime_ns == before
    result = CliRunner().invoke(cli, ["--params", str(params), "render", "--only", "nope"])
    assert result.exit_code != 0 and "unknown renderer" in str(result.exception or result.output)


def test_a_crashing_renderer_fails_the_job_in_one_line_after_drawing_the_rest(demo, monkeypatch):
    import dataclasses

    from promptbias.render.registry import RENDERERS

    tmp, params, _, _ = demo

    def crash(inputs):
        raise ZeroDivisionError("planted")

    monkeypatch.setitem(RENDERERS, "fig5", dataclasses.replace(RENDERERS["fig5"], draw=crash))
    before = (tmp / "results/tables/table1.md").stat().st_mtime_ns
    result = CliRunner().invoke(
        cli, ["--params", str(params), "render", "--only", "table1", "--only", "fig5"]
    )
    assert isinstance(result.exception, UserError), result.output  # the CLI: one line, exit status 2
    assert "render: 1 renderer(s) failed (fig5)" in str(result.exception)
    assert (tmp / "results/tables/table1.md").stat().st_mtime_ns > before  # the others were drawn
    assert "renderer failed: ZeroDivisionError: planted" in (tmp / "results/report.html").read_text()


def test_paper_values_and_marked_gaps_for_missing_runs(tmp_path, monkeypatch):
    """Real datasets get the paper's values; a dataset never run and a broken probe leave marked gaps."""
    monkeypatch.chdir(tmp_path)
    datasets = ["eurosat", "dtd", "demo_shapes"]
    params = _workspace(
        tmp_path, datasets, run=["eurosat", "demo_shapes"], probed=["demo_shapes"], sens=["eurosat"]
    )
    shutil.rmtree(tmp_path / "probes/demo_shapes/prompt")  # a probe of a probed dataset not run yet
    broken = tmp_path / "probes/demo_shapes/zeroshot/seed1/relevancy.parquet"
    broken.write_bytes(b"not a parquet file")  # e.g. an interrupted copy
    names = ["table1", "fig2", "fig5", "fig6"]  # a subset keeps the test fast; fig2 meets the broken file
    result = _render(params, *[f"--only={n}" for n in names])
    assert "gap" in result.output
    cfg = load_params([str(params)])
    for path in expected_outputs(cfg, [*names, "report"]):
        assert (tmp_path / path).is_file() and (tmp_path / path).stat().st_size > 0, path
    t = pd.read_csv(tmp_path / "results/tables/table1.csv", keep_default_na=False, na_values=[""]).set_index(
        "dataset"
    )
    for prefix, col in (("clip", "CLIP"), ("prompt", "PROMPT"), ("bias", "BIAS"), ("optimal_val", "OPTIMAL")):
        assert t.loc["eurosat", f"{prefix}_paper"] == PAPER_TABLE1["eurosat"][col]
        assert t.loc["eurosat", f"{prefix}_diff"] == pytest.approx(
            t.loc["eurosat", f"{prefix}_mean"] - PAPER_TABLE1["eurosat"][col]
        )
        assert t.loc["dtd", f"{prefix}_paper"] == PAPER_TABLE1["dtd"][col]  # published even when not run
    assert pd.isna(t.loc["dtd", "bias_mean"]) and t.loc["dtd", "status"].startswith("not run")
    md = (tmp_path / "results/tables/table1.md").read_text()
    assert "| EuroSAT |" in md and "86.5" in md and "| DTD | not run |" in md
    assert "| CLIP | paper | Δ |" in md  # published values: the paper and Δ columns are there
    html = (tmp_path / "results/report.html").read_text()
    assert "Not run yet" in html and "probes/dtd" in html and "unreadable" in html


def test_fig2_compares_zeroshot_with_the_relevancy_prompt_and_averages_as_configured(tmp_path, monkeypatch):
    from promptbias.render.inputs import Inputs
    from promptbias.render.relevancy import _curves

    monkeypatch.chdir(tmp_path)
    cfg = load_params([str(_params(tmp_path, ["demo_shapes"], []))])
    figure = "prompt-d12-n4"  # probes.relevancy_prompt: 4 prompts in every layer of methods.prompt (12)
    for i, method in enumerate(("zeroshot", figure, "prompt")):
        rows = [("text", -1, -1, "norm", f"pos_{j}", 0.1 * j + i) for j in range(4)]
        rows += [("text", -1, -1, "norm_reached", f"pos_{j}", 0.2 * j + i) for j in range(4)]
        out = Path("probes/demo_shapes") / method / "seed1"
        out.mkdir(parents=True)
        _rows("demo_shapes", method, "relevancy", rows).to_parquet(out / "relevancy.parquet", index=False)
    curves, gaps = _curves(Inputs(cfg), "demo_shapes", "text")
    assert not gaps and list(curves) == ["zeroshot", figure]
    np.testing.assert_allclose(curves[figure][1], [1.0, 1.1, 1.2, 1.3])  # the paper's: zeros after EOS
    cfg["render"]["relevancy_average"] = "reached"
    curves, _ = _curves(Inputs(cfg), "demo_shapes", "text")
    np.testing.assert_allclose(curves[figure][1], [1.0, 1.2, 1.4, 1.6])


# ------------------------------------------------------------------------------- base-to-novel
def _cross_dataset_section(cfg: dict, source: str, domain_targets: list[str] | None = None) -> dict:
    """params ``cross_dataset`` with another source; its domain targets (ImageNet variants, when the schema
    has that key) set to ``domain_targets`` (default: none)."""
    section = {**cfg["cross_dataset"], "source": source}
    if "domain_targets" in section:
        section["domain_targets"] = list(domain_targets or [])
    return section


def _b2n_workspace(tmp: Path, datasets: list[str]) -> tuple[Path, dict]:
    params = _params(tmp, datasets, [])
    cfg = yaml.safe_load(params.read_text())
    cfg["protocols"] = ["fewshot", "base2novel"]
    params.write_text(yaml.safe_dump(cfg))
    cfg = load_params([str(params)])
    views = [f"{d}-{v}" for d in datasets for v in ("base", "novel")]
    _write_metrics([*datasets, *views], cfg, random.Random(1))
    aggregate(cfg)
    return params, cfg


def test_base2novel_table_pairs_the_views_into_base_novel_and_hm(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    datasets = ["demo_shapes", "demo_aerial"]
    params, cfg = _b2n_workspace(tmp_path, datasets)
    assert {p.name for p in expected_outputs(cfg) if p.stem.startswith("base2novel")} == {
        "base2novel.md", "base2novel.csv", "base2novel_probes.md", "base2novel_probes.csv",
        "base2novel_probes.png", "base2novel_probes.pdf"}  # fmt: skip
    rng = np.random.default_rng(0)
    for view in ("base", "novel"):
        _write_probes(f"demo_shapes-{view}", "prompt", rng, ["x.png"])
    novel = tmp_path / "probes/demo_shapes-novel/prompt/seed1/bias_decomposition.parquet"
    df = pd.read_parquet(novel)
    df.loc[(df["variant"] == "prompt_tokens") & (df["key"] == "explained_share"), "value"] = 0.25
    df.to_parquet(novel, index=False)
    _render(params, "--only", "base2novel", "--only", "findings")

    runs = strict_json(tmp_path / "metrics/summary.json")["runs"]
    t = pd.read_csv(tmp_path / "results/tables/base2novel.csv").set_index(["dataset", "method"])
    acc = {(d, m, v): runs[f"{d}-{v}/{m}"]["accuracy_mean"] for d in datasets for m in ("zeroshot", "prompt", "bias")
           for v in ("base", "novel")}  # fmt: skip
    for d in datasets:
        b, n = acc[(d, "bias", "base")], acc[(d, "bias", "novel")]
        assert t.loc[(d, "bias"), "base_mean"] == b and t.loc[(d, "bias"), "novel_mean"] == n
        assert t.loc[(d, "bias"), "hm"] == pytest.approx(2 * b * n / (b + n))
    base = sum(acc[(d, "prompt", "base")] for d in datasets) / 2
    novel_avg = sum(acc[(d, "prompt", "novel")] for d in datasets) / 2
    assert t.loc[("AVERAGE", "prompt"), "hm"] == pytest.approx(
        2 * base * novel_avg / (base + novel_avg)
    )  # HM of means
    assert (t["kind"] == "ours").all()  # demo datasets: nothing published

    probes = pd.read_csv(tmp_path / "results/tables/base2novel_probes.csv")
    row = probes[
        (probes["dataset"] == "demo_shapes") & (probes["quantity"] == "explained share, text prompts")
    ]
    assert row["novel"].item() == pytest.approx(0.25) and row["base"].item() != pytest.approx(0.25)

    f = pd.read_csv(tmp_path / "results/tables/findings.csv").set_index("finding").loc["novel_transfer"]
    gain = sum(acc[(d, "bias", "novel")] - acc[(d, "prompt", "novel")] for d in datasets) / 2
    assert f["value"] == pytest.approx(gain)
    assert (
        f["verdict"] == ("yes" if gain >= 0 else "no")
        and ("better" if gain >= 0 else "worse") in f["measured"]
    )


def test_base2novel_sets_the_published_rows_beside_ours_and_their_average_only_over_the_papers_datasets(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    params, _ = _b2n_workspace(tmp_path, list(PAPER_TABLE1))
    _render(params, "--only", "base2novel")
    t = pd.read_csv(tmp_path / "results/tables/base2novel.csv").set_index(["dataset", "method"])
    row = t.loc[("AVERAGE", "CLIP")]  # CoCoOp Table 1(a), under CLIP's name, not as our zero-shot run
    assert (row["kind"], row["base_mean"], row["novel_mean"], row["hm"]) == ("published", 69.34, 74.22, 71.70)
    assert row["source"].startswith("CoCoOp (Zhou et al., CVPR 2022), Table 1, via deep-diver/")
    eurosat = t.loc["eurosat"]
    ours_then_published = ["zeroshot", "prompt", "bias", "CLIP", "CoOp", "CoCoOp", "MaPLe"]
    assert list(eurosat.index) == ours_then_published
    assert tuple(eurosat.loc["MaPLe", ["base_mean", "novel_mean", "hm"]]) == (94.07, 73.23, 82.35)
    flowers = t.loc[("oxford_flowers", "CoOp")]  # the papers' Flowers102
    assert (flowers["base_mean"], flowers["novel_mean"], flowers["hm"]) == (97.60, 59.67, 74.06)
    assert t.loc[("AVERAGE", "IVLP 2+2, 5 ep"), "hm"] == 77.90  # the MaPLe repository's IVLP average
    assert ("eurosat", "IVLP 2+2, 5 ep") not in t.index  # the repositories publish the average only
    assert t.loc[("AVERAGE", "bias"), "kind"] == "ours" and ("AVERAGE", "BIAS") not in t.index
    md = (tmp_path / "results/tables/base2novel.md").read_text()
    assert "| **AVERAGE** | *CLIP* | 69.34 | 74.22 | 71.70 | CoCoOp T1 |" in md
    assert "| EuroSAT | *MaPLe* | 94.07 | 73.23 | 82.35 | MaPLe T1 |" in md
    assert (
        "**MaPLe T1** = MaPLe (Khattak et al., CVPR 2023), Table 1, via muzairkhattak/multimodal-prompt" in md
    )

    cfg = yaml.safe_load(params.read_text())
    cfg["sweep"]["datasets"] = list(PAPER_TABLE1)[:-1]  # ten of the eleven: not the published average
    params.write_text(yaml.safe_dump(cfg))
    _render(params, "--only", "base2novel")
    t = pd.read_csv(tmp_path / "results/tables/base2novel.csv").set_index(["dataset", "method"])
    assert not (t.loc["AVERAGE"]["kind"] == "published").any() and ("dtd", "CoCoOp") in t.index


def test_without_the_protocol_nothing_of_base2novel_is_rendered(demo):
    tmp, _, cfg, _ = demo
    assert not [p for p in expected_outputs(cfg) if "base2novel" in p.name]
    assert not list((tmp / "results/tables").glob("base2novel*"))
    assert "novel_transfer" not in (tmp / "results/tables/findings.csv").read_text()
    html = (tmp / "results/report.html").read_text()
    assert "sec-base2novel" not in html and "sec-cross_dataset" not in html  # no empty sections either


def test_cross_dataset_table_sets_the_transfer_beside_the_source(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = _params(tmp_path, ["demo_shapes", "demo_aerial"], [])
    cfg = yaml.safe_load(params.read_text())
    cfg["protocols"] = ["fewshot", "cross_dataset"]
    cfg["cross_dataset"] = _cross_dataset_section(cfg, "demo_shapes")
    params.write_text(yaml.safe_dump(cfg))
    cfg = load_params([str(params)])
    _write_metrics(["demo_shapes", "demo_aerial", "demo_aerial-from_demo_shapes"], cfg, random.Random(2))
    aggregate(cfg)
    assert {p.name for p in expected_outputs(cfg) if p.stem == "cross_dataset"} == {
        "cross_dataset.md",
        "cross_dataset.csv",
    }
    _render(params, "--only", "cross_dataset", "--only", "findings")
    runs = strict_json(tmp_path / "metrics/summary.json")["runs"]
    t = pd.read_csv(tmp_path / "results/tables/cross_dataset.csv").set_index("dataset")
    assert t.loc["demo_aerial", "bias_mean"] == runs["demo_aerial-from_demo_shapes/bias"]["accuracy_mean"]
    assert (
        t.loc["demo_aerial", "zeroshot_mean"] == runs["demo_aerial/zeroshot"]["accuracy_mean"]
    )  # the target's CLIP
    assert (
        t.loc["demo_shapes", "role"] == "source"
        and t.loc["demo_shapes", "bias_mean"] == runs["demo_shapes/bias"]["accuracy_mean"]
    )
    source_gain = runs["demo_shapes/bias"]["accuracy_mean"] - runs["demo_shapes/zeroshot"]["accuracy_mean"]
    target_gain = (
        runs["demo_aerial-from_demo_shapes/bias"]["accuracy_mean"]
        - runs["demo_aerial/zeroshot"]["accuracy_mean"]
    )
    f = pd.read_csv(tmp_path / "results/tables/findings.csv").set_index("finding").loc["dataset_transfer"]
    assert f["value"] == pytest.approx(target_gain)
    assert f["verdict"] == ("yes" if target_gain < source_gain else "no")
    assert "novel_transfer" not in pd.read_csv(tmp_path / "results/tables/findings.csv")["finding"].tolist()
