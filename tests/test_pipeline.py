"""The stage spec and its two engines: dvc.yaml is fresh, Snakemake and DVC plan the same jobs."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml
from click.testing import CliRunner
from workflow_helpers import REPO, dvc_stages, git_dvc_repo, project_copy, run, snakemake_jobs

from promptbias.cli import cli
from promptbias.config import load_params
from promptbias.errors import UserError
from promptbias.pipeline import Pipeline
from promptbias.pipeline import get_key as _get
from promptbias.pipeline import leaves as _leaves

PAPER = ("params.yaml",)
DEMO = ("params.yaml", "config/demo.yaml")


def _pipe(files=PAPER, overrides=()):
    return Pipeline.from_files([str(REPO / f) for f in files], overrides)


def _leaf_keys(cfg, keys):
    return {leaf for k in keys for leaf in _leaves(_get(cfg, k), k)}


def test_dvc_yaml_is_fresh(monkeypatch):
    monkeypatch.chdir(REPO)
    res = CliRunner().invoke(cli, ["dvc-yaml", "--check"])
    assert res.exit_code == 0, res.output


def test_dvc_plots_are_the_training_curves_and_every_rendered_figure():
    from promptbias.pipeline.dvc import dvc_yaml_text
    from promptbias.render.catalog import expected_outputs

    pipe = _pipe(DEMO)
    plots = yaml.safe_load(dvc_yaml_text(pipe, stages={}))["plots"]
    images = {p for p in plots if isinstance(p, str)}
    pngs = {str(p) for p in expected_outputs(pipe.cfg) if p.suffix == ".png"}
    assert images == pngs and any("sensitivity" in p for p in images)  # dvc plots diff: before/after
    curves = {next(iter(p)) for p in plots if isinstance(p, dict)}
    assert curves == {f"train-{c}-{d}" for c in ("loss", "accuracy") for d in pipe.cfg["sweep"]["datasets"]}


def test_dvc_yaml_check_fails_in_one_line_when_stale(tmp_path, monkeypatch):
    proj = project_copy(tmp_path)
    monkeypatch.chdir(proj)
    (proj / "dvc.yaml").write_text((proj / "dvc.yaml").read_text().replace("fetch", "fetsh", 1))
    res = CliRunner().invoke(cli, ["dvc-yaml", "--check"])
    assert res.exit_code == 1
    assert len(res.output.strip().splitlines()) == 1 and "stale" in res.output


def test_the_train_stage_tracks_every_key_training_reads():
    pipe = _pipe(DEMO)
    job = pipe.job("train", {"dataset": "demo_shapes", "method": "bias", "seed": 1})
    tracked = _leaf_keys(pipe.cfg, job.params)
    # the whole train section but the evaluation batch (which the evaluate stage tracks)
    assert {f"train.{k}" for k in pipe.cfg["train"]} - {"train.eval_batch_size"} <= tracked
    assert {
        "model.name",
        "model.pretrained",
        "model.precision",
        "device",
        "cpu_threads",
        "data.shots",
    } <= tracked
    assert {f"methods.bias.{k}" for k in pipe.cfg["methods"]["bias"]} <= tracked
    assert not any(k.startswith(("slurm.", "render.", "probes.")) for k in tracked)


@pytest.mark.parametrize("device", ["cpu", "auto", "cuda"])
def test_slurm_resources_follow_the_config(device):
    from promptbias.pipeline.snakemake import rule_resources

    overrides = (
        f"device={device}",
        "slurm.account=lab",
        "slurm.partition=cpu",
        "slurm.gpu_partition=gpu",
        "slurm.mem_mb.train=64000",
    )
    pipe = _pipe(DEMO, overrides)
    stages = {stage.name: stage for stage in pipe.stages()}
    train, fetch = rule_resources(pipe, stages["train"]), rule_resources(pipe, stages["fetch"])
    gpu = int(device != "cpu")
    assert train == {
        "gpu": gpu,
        "runtime": 240,
        "mem_mb": 64000,
        "slurm_account": "lab",
        "slurm_partition": "gpu" if gpu else "cpu",
    }
    assert fetch == {
        "gpu": 0,
        "runtime": 720,
        "mem_mb": 16000,
        "slurm_account": "lab",
        "slurm_partition": "cpu",
    }
    for name in ("evaluate", "probe", "pretrain-demo"):
        assert rule_resources(pipe, stages[name])["gpu"] == gpu
    for name in ("split", "cache", "aggregate", "render"):
        assert rule_resources(pipe, stages[name])["gpu"] == 0
    # empty account and partitions (the shipped values): sbatch gets neither -A nor -p
    assert not {"slurm_account", "slurm_partition"} & set(rule_resources(_pipe(DEMO), stages["train"]))


def test_snakemake_config_values_left_as_text_are_read_as_yaml(monkeypatch):
    from types import SimpleNamespace

    from promptbias.config import deep_merge
    from promptbias.pipeline.snakemake import pipeline_from_snakemake

    monkeypatch.chdir(REPO)
    files = [REPO / "params.yaml", REPO / "config/demo.yaml"]
    base = deep_merge(yaml.safe_load(files[0].read_text()), yaml.safe_load(files[1].read_text()))
    # what Snakemake hands the Snakefile for --config 'train={"epochs": 3, "warmup_lr": 1e-4}' sweep.seeds=[1, 2]
    config = deep_merge(base, {"train": {"epochs": "3", "warmup_lr": "1e-4"}, "sweep": {"seeds": "[1, 2]"}})
    config = deep_merge(config, {"data": {"root": "1e3"}})  # a string in params.yaml stays one
    config = deep_merge(config, {"probes": {"seeds": ["2"]}, "sweep": {"datasets": ["demo_shapes"]}})
    pipe = pipeline_from_snakemake(SimpleNamespace(overwrite_configfiles=[str(files[1])]), config)
    assert pipe.cfg["train"]["epochs"] == 3 and pipe.cfg["train"]["warmup_lr"] == 1e-4
    assert pipe.cfg["sweep"]["seeds"] == [1, 2] and pipe.cfg["data"]["root"] == "1e3"
    assert pipe.cfg["probes"]["seeds"] == [2] and pipe.cfg["sweep"]["datasets"] == ["demo_shapes"]
    assert "train.epochs=3" in pipe.overrides and "sweep.seeds=[1, 2]" in pipe.overrides


def test_paper_config_plans_every_dataset_method_seed():
    pipe = _pipe()
    cfg = pipe.cfg
    jobs = list(pipe.jobs())
    by_stage = {}
    for job in jobs:
        by_stage.setdefault(job.stage.name, []).append(job)
    ds, seeds = cfg["sweep"]["datasets"], cfg["sweep"]["seeds"]
    assert len(ds) == 11 and len(seeds) == 3
    assert {
        (j.wildcards["dataset"], j.wildcards["method"], j.wildcards["seed"]) for j in by_stage["train"]
    } == {(d, m, str(s)) for d in ds for m in ("prompt", "bias") for s in seeds} | {
        (d, "prompt-d12-n4", "1") for d in ds
    }  # Figs. 2-3's 4+4 prompt model, trained for the probe seed only
    assert len(by_stage["evaluate"]) == 11 * 3 * 3
    assert "pretrain-demo" not in by_stage  # the paper uses the OpenAI weights
    assert 150 <= len(jobs) <= 300, f"{len(jobs)} DVC stages — keep it in the low hundreds"


def test_params_keys_are_exactly_what_the_command_reads():
    pipe = _pipe()
    train = pipe.job("train", {"dataset": "dtd", "method": "prompt", "seed": 1})
    assert "methods.prompt" in train.params and "methods.bias" not in train.params
    assert {
        "model",
        "device",
        "cpu_threads",
        "data.root",
        "data.shots",
        "train.epochs",
        "train.crop_scale",
    } <= set(train.params)
    assert "train.eval_batch_size" not in train.params  # evaluate's: editing it retrains nothing
    zs = pipe.job("evaluate", {"dataset": "dtd", "method": "zeroshot", "seed": 2})
    assert not any(d.startswith("runs/") for d in zs.deps)  # zero-shot depends on no train
    assert any("/splits/dtd/shot16_seed2.json" in d for d in zs.deps)  # val accuracy on the split's val


@pytest.mark.parametrize("files", [PAPER, DEMO], ids=["paper", "demo"])
def test_prompt_lr_edit_touches_only_prompt_jobs(files):
    before = _pipe(files)
    after = _pipe(files, overrides=["methods.prompt.lr=0.01"])
    changed = {
        a.name
        for a, b in zip(before.jobs(), after.jobs(), strict=True)
        if before.param_values(a.params) != after.param_values(b.params)
    }
    assert changed, "nothing reads methods.prompt.lr"
    for name in changed:
        assert re.match(r"^(train|evaluate|probe)-[a-z0-9_]+-prompt(-d\d+-n\d+)?-s\d+$", name), name


def test_demo_layering_attributes_each_key_to_the_file_that_sets_it(monkeypatch):
    monkeypatch.chdir(REPO)
    pipe = Pipeline.from_files(DEMO)
    entries = pipe.dvc_params(["train", "methods.prompt", "model"])
    plain = [e for e in entries if isinstance(e, str)]
    layered = next(e for e in entries if isinstance(e, dict))
    demo_keys = next(iter(layered.values()))
    assert "methods.prompt.n_ctx_text" in plain and "train.momentum" in plain  # only params.yaml sets these
    assert "train.epochs" in demo_keys and "methods.prompt.lr" in demo_keys and "model" in demo_keys


def test_demo_weights_must_be_the_pretrain_output(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {pretrained: elsewhere.safetensors}\n")
    with pytest.raises(UserError, match=r"model.pretrained: .* pretrain-demo output"):
        Pipeline.from_files([str(REPO / "params.yaml"), str(REPO / "config/demo.yaml"), str(bad)])


def test_probe_methods_must_be_evaluated(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("probes: {methods: [prompt-d3-n4]}\n")
    with pytest.raises(UserError, match=r"probes.methods: 'prompt-d3-n4'"):
        Pipeline.from_files([str(REPO / "params.yaml"), str(bad)])


XD_FILE = {"xd.yaml": "protocols: [fewshot, cross_dataset]\n"}  # the paper + cross-dataset and DG views


@pytest.mark.parametrize(
    "configfiles",
    [[], ["config/demo.yaml"], ["config/demo.yaml", "config/demo-generalization.yaml"], ["xd.yaml"]],
    ids=["paper", "demo", "demo-generalization", "paper-cross_dataset"],
)
def test_snakemake_and_dvc_plan_the_same_jobs(tmp_path, configfiles):
    proj = project_copy(tmp_path)
    for name in configfiles:
        if name in XD_FILE:
            (proj / name).write_text(XD_FILE[name])
    files = ("params.yaml", *configfiles)
    if configfiles:  # the dvc.yaml of this layering, as a user would generate it
        run(["promptbias", *(a for f in files for a in ("--params", f)), "dvc-yaml"], proj)
    stages = dvc_stages(proj / "dvc.yaml")
    check = stages.pop("check-dvc-yaml")  # DVC's own first stage: dvc.yaml against the layer files
    assert check == {"cmd": "promptbias dvc-yaml --check", "deps": list(files), "outs": [], "params": []}
    cfg = load_params([str(proj / f) for f in files])
    sm = snakemake_jobs(proj, "all", configfiles)
    # the same arguments; Snakemake names its config files, DVC's bare command takes dvc.yaml's layering
    prefix = shlex.join(["promptbias", *(a for f in files for a in ("--params", f))]) + " "
    assert all(j["cmd"].startswith(prefix) for j in sm)
    assert all(s["cmd"].startswith("promptbias ") and "--params" not in s["cmd"] for s in stages.values())
    sm_jobs = {
        tuple(sorted(j["output"])): (
            j["cmd"].removeprefix(prefix),
            sorted(j["input"]),
            _leaf_keys(cfg, j["params"]),
        )
        for j in sm
    }
    dvc_jobs = {
        tuple(sorted(s["outs"])): (
            s["cmd"].removeprefix("promptbias "),
            sorted(s["deps"]),
            _leaf_keys(cfg, s["params"]),
        )
        for s in stages.values()
    }
    assert set(sm_jobs) == set(dvc_jobs)
    for outs, (cmd, deps, keys) in sm_jobs.items():
        assert (cmd, deps, keys) == dvc_jobs[outs], outs
    gpu_rules = {j["rule"] for j in sm if j["gpu"]}
    demo = "config/demo.yaml" in configfiles
    assert gpu_rules == (set() if demo else {"train", "evaluate", "probe"})  # demo: device cpu
    assert all(j["log"] for j in sm)


def test_snakemake_dry_run_plans_the_paper(tmp_path):
    proj = project_copy(tmp_path)
    res = run(["snakemake", "-n", "--cores", "all", "--resources", "gpu=4"], proj, timeout=600)
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", res.stdout, flags=re.M))
    assert int(counts["train"]) == 11 * 2 * 3 + 11  # + the 4+4 prompt model of Figs. 2-3 (probe seed)
    assert int(counts["evaluate"]) == 11 * 3 * 3
    assert int(counts["fetch"]) == 11 and int(counts["split"]) == 33 and int(counts["render"]) == 1
    assert int(counts["aggregate"]) == 1 and int(counts["probe"]) == 11 * 4  # 3 methods + the 4+4 model


def test_snakemake_reports_bad_params_in_one_line(tmp_path):
    proj = project_copy(tmp_path)
    (proj / "bad.yaml").write_text("train: {epocs: 3}\n")
    res = run(["snakemake", "-n", "--cores", "1", "--configfile", "bad.yaml"], proj, check=False)
    assert res.returncode != 0
    assert "train.epocs: unknown key — did you mean 'epochs'?" in res.stderr + res.stdout


def test_dvc_repro_dry_in_a_git_dvc_repo(tmp_path):
    repo = git_dvc_repo(tmp_path / "repo")
    # --force: plan every stage (on an empty repo DVC cannot hash the not-yet-made inputs of later stages)
    res = run(["dvc", "repro", "--dry", "--force"], repo, timeout=900)
    ran = re.findall(r"Running stage '([^']+)'", res.stdout)
    assert len(ran) == len(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    assert ran[0] == "check-dvc-yaml" and ran[1].startswith("fetch-") and ran[-1] == "render"


# ------------------------------------------------------------------------------- base-to-novel
B2N = "protocols: [fewshot, base2novel]\n"


def test_snakemake_dry_run_plans_the_protocols_only_when_switched_on(tmp_path):
    proj = project_copy(tmp_path)
    (proj / "on.yaml").write_text("protocols: [fewshot, base2novel, cross_dataset]\n")
    argv = ["snakemake", "-n", "--cores", "all", "--resources", "gpu=4"]
    on = run([*argv, "--configfile", "on.yaml"], proj, timeout=900).stdout
    off = run(argv, proj, timeout=900).stdout
    views = re.compile(r"dataset=[a-z0-9_]+-(base|novel|from_[a-z0-9_]+)\b")
    assert not views.search(off)  # off: not one job of a class view or a transfer
    assert not re.search(r"imagenet(v2|_sketch|_a|_r)\b", off)  # nor of an ImageNet variant
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", on, flags=re.M))
    # the few-shot sweep as before, plus: train on base (prompt, bias × 3 seeds + the Figs. 2-3 model),
    # evaluate both views (3 methods × 3 seeds), probe both views (3 methods + the 4+4 model); the
    # cross-dataset transfer evaluates ImageNet's prompt and bias runs on the 10 others (× 3 seeds), no training,
    # and (domain generalisation) zero-shot and those runs on the 4 ImageNet variants (fetched and cached)
    assert int(counts["train"]) == 11 * 2 * 3 + 11 + 11 * (2 * 3 + 1)
    assert int(counts["evaluate"]) == 11 * 3 * 3 * 3 + 10 * 2 * 3 + 4 * 3 * 3
    assert int(counts["probe"]) == 11 * 4 * 3
    assert int(counts["fetch"]) == int(counts["cache"]) == 11 + 4
    assert int(counts["split"]) == 33  # the views and the test-only variants have no split of their own
    for ds in ("imagenet", "eurosat"):
        assert f"dataset={ds}-base, method=bias, seed=3" in on
        assert f"dataset={ds}-novel, method=zeroshot, seed=1" in on
    assert "dataset=dtd-novel, method=prompt" in on and "runs/dtd-novel/" not in on  # novel: never trained
    assert (
        "dataset=eurosat-from_imagenet, method=bias, seed=2" in on and "runs/eurosat-from_imagenet" not in on
    )
    assert "imagenet-from_imagenet" not in on
    transfers_zs = re.findall(r"dataset=([a-z0-9_]+)-from_imagenet, method=zeroshot, seed=1\b", on)
    assert sorted(transfers_zs) == ["imagenet_a", "imagenet_r", "imagenet_sketch", "imagenetv2"]  # DG only
    for variant in ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"):
        assert f"dataset={variant}-from_imagenet, method=prompt, seed=3" in on
        assert f"data/raw/{variant}.json" in on and f"data/cache/{variant}" in on
        assert f"data/splits/{variant}/" not in on and f"runs/{variant}" not in on
        assert f"probes/{variant}" not in on


@pytest.mark.parametrize("target", ["report_html", "metrics"])
def test_switching_a_protocol_on_reruns_the_named_targets(tmp_path, target):
    """After a finished demo, adding base2novel must make `snakemake report_html` (and `metrics`) plan the
    protocol's jobs and rerun render (aggregate): the targets request every output of their job, so a new
    table is a missing output (Snakemake does not fire the params trigger of a job with new outputs)."""
    import os

    proj = project_copy(tmp_path)
    stamp = 1_700_000_000
    for job in snakemake_jobs(proj, "all", ["config/demo.yaml"]):  # a finished demo: every output present
        for out in job["output"]:
            path = proj / out
            if not os.path.splitext(out)[1]:  # a directory output (data/cache/<ds>, results/figures)
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            os.utime(path, (stamp, stamp))  # one mtime: nothing is older than its inputs
    argv = [
        "snakemake",
        target,
        "-n",
        "--cores",
        "1",
        "--resources",
        "gpu=0",
        "--configfile",
        "config/demo.yaml",
    ]
    assert "Nothing to be done" in run(argv, proj, timeout=900).stdout
    (proj / "on.yaml").write_text(B2N)
    plan = run([*argv, "on.yaml"], proj, timeout=900).stdout
    rule = "render" if target == "report_html" else "aggregate"
    assert re.search(rf"^{rule}\s+1$", plan, flags=re.M), plan[-2000:]
    assert "dataset=demo_shapes-novel, method=bias, seed=3" in plan


def test_base2novel_jobs_read_the_base_run_and_their_datasets_files(tmp_path):
    (tmp_path / "b2n.yaml").write_text(B2N)
    pipe = Pipeline.from_files([str(REPO / "params.yaml"), str(tmp_path / "b2n.yaml")])
    novel = pipe.job("evaluate", {"dataset": "dtd-novel", "method": "bias", "seed": 2})
    assert novel.deps == ["data/raw/dtd.json", "data/splits/dtd/shot16_seed2.json", "data/cache/dtd",
                          "runs/dtd-base/bias/seed2/params.safetensors"]  # fmt: skip
    assert novel.out_paths == [
        "metrics/dtd-novel/bias/seed2.json",
        "metrics/dtd-novel/bias/seed2.per_class.json",
    ]
    train = pipe.job("train", {"dataset": "dtd-base", "method": "bias", "seed": 2})
    assert (
        train.name == "train-dtd-base-bias-s2"
        and train.out_paths[0] == "runs/dtd-base/bias/seed2/params.safetensors"
    )
    few = pipe.job("train", {"dataset": "dtd", "method": "bias", "seed": 2})
    assert (
        train.params == few.params
    )  # the same keys: the view is in the job's identity (its name), not params
    # the protocol adds jobs; the few-shot jobs keep their commands, deps, outputs and params
    plain = {j.name: j for j in _pipe().jobs()}
    both = {j.name: j for j in pipe.jobs()}
    changed = {n for n in plain if (plain[n].args, plain[n].deps, plain[n].outs, plain[n].params)
               != (both[n].args, both[n].deps, both[n].outs, both[n].params)}  # fmt: skip
    assert changed == {"aggregate", "render"}  # they read `protocols` now (and render writes its tables)
    assert all("protocols" in jobs["aggregate"].params for jobs in (plain, both))  # read either way


def test_a_transfer_reads_the_sources_run_and_the_targets_files(tmp_path):
    (tmp_path / "xd.yaml").write_text("protocols: [fewshot, cross_dataset]\n")
    pipe = Pipeline.from_files([str(REPO / "params.yaml"), str(tmp_path / "xd.yaml")])
    job = pipe.job("evaluate", {"dataset": "dtd-from_imagenet", "method": "prompt", "seed": 3})
    assert job.deps == ["data/raw/dtd.json", "data/splits/dtd/shot16_seed3.json", "data/cache/dtd",
                        "data/raw/imagenet.json", "data/splits/imagenet/shot16_seed3.json",  # checked: the run's
                        "runs/imagenet/prompt/seed3/params.safetensors"]  # fmt: skip
    assert job.out_paths[0] == "metrics/dtd-from_imagenet/prompt/seed3.json"
    assert pipe.job("aggregate", {}).params[-2:] == ["protocols", "cross_dataset"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("protocols: [fewshot, cross_dataset]\ncross_dataset: {source: demo_shapes}\n")
    with pytest.raises(UserError, match=r"^cross_dataset.source: 'demo_shapes' is not in sweep.datasets"):
        Pipeline.from_files([str(REPO / "params.yaml"), str(bad)])


def test_domain_generalisation_evaluates_the_imagenet_variants_with_imagenets_runs(tmp_path):
    (tmp_path / "xd.yaml").write_text("protocols: [fewshot, cross_dataset]\n")
    pipe = Pipeline.from_files([str(REPO / "params.yaml"), str(tmp_path / "xd.yaml")])
    assert pipe.cfg["cross_dataset"]["domain_targets"] == [
        "imagenetv2",
        "imagenet_sketch",
        "imagenet_a",
        "imagenet_r",
    ]
    job = pipe.job("evaluate", {"dataset": "imagenet_r-from_imagenet", "method": "bias", "seed": 2})
    assert job.deps == ["data/raw/imagenet_r.json", "data/cache/imagenet_r",  # test-only: no split (no val)
                        "data/raw/imagenet.json", "data/splits/imagenet/shot16_seed2.json",  # checked: the run's
                        "runs/imagenet/bias/seed2/params.safetensors"]  # fmt: skip
    assert job.out_paths[0] == "metrics/imagenet_r-from_imagenet/bias/seed2.json"
    zs = pipe.job("evaluate", {"dataset": "imagenet_r-from_imagenet", "method": "zeroshot", "seed": 1})
    assert zs.deps == ["data/raw/imagenet_r.json", "data/cache/imagenet_r"]
    assert (
        job.params
        == pipe.job("evaluate", {"dataset": "dtd-from_imagenet", "method": "bias", "seed": 2}).params
    )
    plain = {j.name: j for j in _pipe().jobs()}
    both = {j.name: j for j in pipe.jobs()}
    added = {n for n in set(both) - set(plain) if re.search(r"-imagenet(v2|_sketch|_a|_r)\b", n)}
    variants = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
    assert added == {f"{stage}-{v}" for stage in ("fetch", "cache") for v in variants} | {
        f"evaluate-{v}-from_imagenet-{m}-s{s}"
        for v in variants
        for m in ("zeroshot", "prompt", "bias")
        for s in (1, 2, 3)
    }  # never split, trained or probed
    changed = {n for n in plain if (plain[n].args, plain[n].deps, plain[n].outs, plain[n].params)
               != (both[n].args, both[n].deps, both[n].outs, both[n].params)}  # fmt: skip
    assert changed == {"aggregate", "render"}
    assert "cross_dataset.domain_targets" in _leaf_keys(pipe.cfg, both["aggregate"].params)
    # another source: the variants are not its domain shifts (their classes are ImageNet's)
    (tmp_path / "other.yaml").write_text(
        "protocols: [fewshot, cross_dataset]\ncross_dataset: {source: dtd}\n"
    )
    other = Pipeline.from_files([str(REPO / "params.yaml"), str(tmp_path / "other.yaml")])
    assert not any("imagenet_" in j.name or "imagenetv2" in j.name for j in other.jobs())
    (tmp_path / "none.yaml").write_text(
        "protocols: [fewshot, cross_dataset]\ncross_dataset: {domain_targets: []}\n"
    )
    none = Pipeline.from_files([str(REPO / "params.yaml"), str(tmp_path / "none.yaml")])
    assert not any("imagenet_" in j.name or "imagenetv2" in j.name for j in none.jobs())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "sweep: {datasets: [imagenet, imagenet_a]}\n",
            r"^sweep.datasets: 'imagenet_a' is a test-only ImageNet variant",
        ),
        (
            "cross_dataset: {domain_targets: [dtd]}\n",
            r"cross_dataset.domain_targets.0: 'dtd' is not one of 'imagenetv2'",
        ),
    ],
)
def test_a_variant_is_only_a_domain_target(tmp_path, text, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(UserError, match=expected) as err:
        Pipeline.from_files([str(REPO / "params.yaml"), str(bad)])
    assert "\n" not in str(err.value)


def test_protocols_must_keep_the_fewshot_sweep(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("protocols: [base2novel]\n")
    with pytest.raises(UserError, match=r"^protocols: \['base2novel'\] lacks fewshot"):
        Pipeline.from_files([str(REPO / "params.yaml"), str(bad)])
