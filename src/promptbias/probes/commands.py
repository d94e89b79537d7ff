"""The ``promptbias probe`` command: one probe on a capped, seeded sample of a dataset's test split.

    promptbias probe relevancy --dataset dtd --method prompt --seed 1

Reads ``probes.{max_images, sample_seed, batch_size, start_layer, map_images, rotations,
relevancy_template}`` (the last: the zero-shot captions of the relevancy probe); the sample is
``random.Random(sample_seed).sample`` of the test indices (then sorted), the same for every method and
seed so tables compare image for image. Runs on the configured device (a GPU when there is one), fp32
and explicit attention. Writes atomically, under ``probes/<ds>/<method>/seed<S>/``:

* ``<kind>.parquet`` — the tidy long table (docs/interfaces.md: dataset, method, seed, probe, branch,
  layer, head, variant, key, value, n);
* ``<kind>.json`` — every convention the probe chose, the settings, the sample and provenance;
* ``<kind>.npz`` — arrays, for probes that have them (maps, bias_decomposition).

``--dataset dtd-novel`` (a base-to-novel class view, :mod:`promptbias.protocols`) probes the tensors
learned on the base classes on a sample of the novel-class test images, with the novel class names.
"""

from __future__ import annotations

import dataclasses
import io
import random
import time
from typing import Any

import click

from promptbias.config import SEED
from promptbias.errors import UserError


def sample_indices(n_test: int, max_images: int, seed: int) -> list[int]:
    """A seeded, sorted sample of at most ``max_images`` test indices."""
    k = min(max_images, n_test)
    return sorted(random.Random(seed).sample(range(n_test), k))


class _ProbeCommand(click.Command):
    """``probe --help`` lists the registered probe kinds (plugins included) after the options."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from promptbias import catalog

        with formatter.section("Kinds"):
            formatter.write_dl([(name, info.summary) for name, info in sorted(catalog.probes().items())])


@click.command("probe", cls=_ProbeCommand)
@click.argument("kinds", nargs=-1, required=True)
@click.option("--dataset", required=True, help="Dataset name (data/raw/<dataset>.json must exist).")
@click.option(
    "--method", "method_id", required=True, help="Method id: zeroshot, prompt, bias, prompt-d<D>-n<N>."
)
@click.option("--seed", type=SEED, required=True, help="Training seed of the run to probe.")
@click.pass_obj
def probe(ctx: Any, kinds: tuple[str, ...], dataset: str, method_id: str, seed: int) -> None:
    """Run one analysis probe and write probes/<dataset>/<method>/seed<S>/<kind>.parquet (+ .json).

    Several KINDS may be given: they run one after the other in this process (one start-up for all).
    """
    from promptbias.pipeline.bind import bind_job
    from promptbias.probes.registry import get_probe
    from promptbias.progress import track

    for kind in kinds:  # check them all before running any
        get_probe(kind)
    cfg = ctx.config
    if list(kinds) != list(cfg["probes"]["kinds"]):  # the job's params are those of probes.kinds
        cfg = {**cfg, "probes": {**cfg["probes"], "kinds": list(kinds)}}
    job = bind_job(ctx, cfg, "probe", {"dataset": dataset, "method": method_id, "seed": seed})
    for kind in track(kinds, desc=f"probe {dataset}/{method_id}/seed{seed}", unit="probe"):
        write_probe(cfg, job, kind, dataset, method_id, seed)


def write_probe(cfg: dict[str, Any], job: Any, kind: str, dataset: str, method_id: str, seed: int) -> None:
    import numpy as np
    import torch

    from promptbias import paths
    from promptbias.config import method_kind
    from promptbias.data import images as data_images
    from promptbias.io import atomic_path, provenance, write_json
    from promptbias.probes import ProbeContext, ProbeSettings
    from promptbias.probes.registry import get_probe
    from promptbias.runs import dataset_info, load_backbone, load_method

    pcfg = cfg["probes"]
    settings = ProbeSettings.from_config(pcfg)
    torch.manual_seed(seed)  # like train/evaluate: a random-init backbone (pretrained: null) is the same one
    clip = load_backbone(cfg)
    clip.model.float()  # probes run in fp32
    ds = dataset_info(cfg, dataset)
    zeroshot = method_kind(method_id) == "zeroshot"  # a learned method keeps the captions it trained with
    template = (
        pcfg["relevancy_template"] if kind == "relevancy" and zeroshot else None
    )  # catalog: zeroshot_params
    if template:
        ds = dataclasses.replace(ds, template=template)  # the paper's Fig. 2 caption, not the dataset's
    method = load_method(cfg, clip, ds, method_id, seed).float().eval()
    _check_start_layer(clip.model, settings.start_layer)
    test = ds.split.get("test") or []
    if not test:
        raise UserError(f"data/raw/{dataset}.json: the test split is empty — re-fetch the dataset")
    idx = sample_indices(len(test), int(pcfg["max_images"]), int(pcfg["sample_seed"]))
    if kind == "maps":  # only the first map_images images are used
        idx = idx[: settings.map_images]
    items = [test[i] for i in idx]
    uint8, labels = data_images.load_eval_images(
        cfg["data"]["root"],
        ds.data,  # a class view (dtd-novel) reads its dataset's images
        items,
        clip.image_size,
        cache=bool(cfg["data"]["cache_images"]),
    )
    ids = [str(it[0]) for it in items]
    pctx = ProbeContext(
        clip=clip,
        method=method,
        images=uint8,
        labels=labels,
        ids=ids,
        settings=settings,
    )
    t0 = time.perf_counter()
    result = get_probe(kind).run(pctx)
    seconds = time.perf_counter() - t0

    out = paths.probe_dir(dataset, method_id, seed)
    frame = result.table.frame(dataset, method_id, seed, kind)
    with atomic_path(out / f"{kind}.parquet", suffix=".parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    if result.arrays is not None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **result.arrays)
        with atomic_path(out / f"{kind}.npz", suffix=".npz") as tmp:
            tmp.write_bytes(buf.getvalue())
    sidecar = {
        "probe": kind,
        "dataset": dataset,
        "method": method_id,
        "seed": seed,
        "backbone": {"name": clip.name, "pretrained": clip.pretrained, "image_size": clip.image_size},
        "device": str(clip.device),
        "precision": "fp32, explicit attention (softmax in float32)",
        "settings": {
            "max_images": int(pcfg["max_images"]),
            "sample_seed": int(pcfg["sample_seed"]),
            "batch_size": settings.batch_size,
            "start_layer": settings.start_layer,
            "map_images": settings.map_images,
            "rotations": list(settings.rotations),
            "relevancy_template": template,
        },
        "sample": {
            "split": "test",
            "rule": "sorted(random.Random(sample_seed).sample(range(n_test), min(max_images, n_test)))",
            "n_test": len(test),
            "n_images": len(ids),
            "image_ids": ids,
        },
        "conventions": result.conventions,
        "table": {"rows": len(frame), "summary_of_arrays": result.summary_only},
        "timing": {"seconds": round(seconds, 3), "ms_per_image": round(1000 * seconds / max(len(ids), 1), 2)},
        **job.record(),
        "provenance": provenance(),
    }
    write_json(out / f"{kind}.json", sidecar)
    click.echo(f"{kind}: {len(frame)} rows over {len(ids)} images → {out / (kind + '.parquet')}")


def _check_start_layer(model: Any, start_layer: int) -> None:
    from promptbias.model.encoders import TextParts

    layers = min(len(model.visual.transformer.resblocks), len(TextParts.of(model).transformer.resblocks))
    if start_layer >= layers:
        raise UserError(
            f"probes.start_layer: {start_layer} is past the last layer of the model ({layers} layers) — "
            f"use 0..{layers - 1}"
        )
