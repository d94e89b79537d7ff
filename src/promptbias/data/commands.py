"""The data stages of the CLI: ``fetch``, ``split`` and ``cache``.

    promptbias fetch eurosat [--from /path/to/DATA] [--keep-archives]   # data/raw/eurosat{/,.json}
    promptbias split eurosat --shots 16 --seed 1                        # data/splits/eurosat/shot16_seed1.json
    promptbias cache eurosat [--image-size 224] [--skip-bad]            # data/cache/eurosat/images_224.*

Paths come from ``data.root``; ``data.source_root`` is the default for ``--from``. ``cache`` takes the
input size from the open_clip config of ``model.name`` unless ``--image-size`` is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from promptbias import paths
from promptbias.config import RunContext
from promptbias.errors import UserError


def _root(cfg: dict[str, Any]) -> Path:
    return Path(cfg["data"]["root"])


@click.command("fetch")
@click.argument("dataset")
@click.option(
    "--from", "source", type=click.Path(file_okay=False), default=None, help="Existing CoOp DATA folder."
)
@click.option("--keep-archives", is_flag=True, help="Keep downloaded archives after extraction.")
@click.pass_obj
def fetch(ctx: RunContext, dataset: str, source: str | None, keep_archives: bool) -> None:
    """Download (or link with --from) DATASET, verify it, and write its normalised split."""
    from promptbias.data import registry
    from promptbias.data.fetch import fetch_dataset
    from promptbias.pipeline.bind import bind_job

    cfg = ctx.config
    spec = registry.get(dataset)
    if source is not None:
        cfg["data"]["source_root"] = source
    bind_job(ctx, cfg, "fetch", {"dataset": dataset})
    seed = int(cfg["demo"]["world_seed"])
    out = fetch_dataset(
        spec, _root(cfg), cfg["data"]["source_root"], keep_archives=keep_archives, demo_seed=seed
    )
    click.echo(f"ok: {out}")


@click.command("split")
@click.argument("dataset")
@click.option("--shots", type=click.IntRange(min=1), default=None, help="K per class (default: data.shots).")
@click.option("--seed", type=int, required=True, help="Random seed (CoOp uses 1, 2, 3).")
@click.pass_obj
def split(ctx: RunContext, dataset: str, shots: int | None, seed: int) -> None:
    """Write the K-shot subset of DATASET for one seed (CoOp/Dassl-compatible)."""
    from promptbias.data import registry, splits
    from promptbias.io import write_json
    from promptbias.pipeline.bind import bind_job

    cfg = ctx.config
    registry.get(dataset)
    splits.refuse_test_only(dataset, "few-shot split")
    if shots is not None:
        cfg["data"]["shots"] = shots
    shots = int(cfg["data"]["shots"])
    bind_job(ctx, cfg, "split", {"dataset": dataset, "seed": seed})
    few = splits.make_fewshot(splits.load_split(_root(cfg), dataset), shots, seed)
    out = paths.split_json(_root(cfg), dataset, shots, seed)
    write_json(out, few)
    click.echo(f"ok: {out} ({len(few['train'])} train, {len(few['val'])} val)")


def model_image_size(cfg: dict[str, Any]) -> int:
    """The input size of ``model.name`` from its open_clip config (no weights are loaded)."""
    import open_clip

    from promptbias.model.loading import register_shipped_configs

    register_shipped_configs()
    name = cfg["model"]["name"]
    model_cfg = open_clip.get_model_config(name)
    if not model_cfg:
        raise UserError(f"model.name: unknown open_clip model {name!r} — fix it or pass --image-size")
    size = model_cfg.get("vision_cfg", {}).get("image_size", 224)
    return int(size[0] if isinstance(size, list | tuple) else size)


@click.command("cache")
@click.argument("dataset")
@click.option(
    "--image-size", type=click.IntRange(min=1), default=None, help="Default: the model's input size."
)
@click.option(
    "--skip-bad",
    is_flag=True,
    help="Record unreadable images in the cache index instead of stopping at the first (a list of what to "
    "re-fetch; train and evaluate still refuse a dataset with unreadable images).",
)
@click.pass_obj
def cache(ctx: RunContext, dataset: str, image_size: int | None, skip_bad: bool) -> None:
    """Decode + test-transform the test and val images of DATASET once into data/cache/<ds>/."""
    from promptbias.data import images, registry, splits
    from promptbias.pipeline.bind import bind_job

    cfg = ctx.config
    registry.get(dataset)
    bind_job(ctx, cfg, "cache", {"dataset": dataset})
    size = image_size or model_image_size(cfg)
    split_ = splits.load_split(_root(cfg), dataset)
    npy = images.build_cache(
        _root(cfg),
        dataset,
        split_["test"] + split_["val"],
        size,
        num_workers=cfg["data"]["num_workers"],
        skip_bad=skip_bad,
    )
    click.echo(f"ok: {npy}")
