"""Evaluate one (dataset, method, seed): top-1 micro, macro (per-class mean) and per-class accuracy.

    promptbias evaluate --dataset eurosat --method prompt --seed 1

The last-epoch parameters are read from ``runs/<ds>/<method>/seed<S>/params.safetensors`` (zero-shot is
built from the dataset template). Text features are computed once; test images come from the decoded
uint8 cache when present. When no learnable tensor enters the image tower (zero-shot), the test image
features are computed once per dataset and shared by the seeds (:mod:`promptbias.frozen_features`).
Besides the full test split, the seed's few-shot validation split is scored (``val_accuracy``) so the
OPTIMAL prompt configuration can be selected without looking at the test set.

A trained method is read only when its file's training identity is this config's training job
(:func:`promptbias.runs.check_trained_for`) and its tensors are finite; the few-shot split only when it
is the subset its (shots, seed) gives. Writes ``metrics/<ds>/<method>/seed<S>.json`` — small and flat,
for ``dvc metrics diff`` — and beside it ``seed<S>.per_class.json``: per-class accuracies plus the
job's record (its params values, and the identity of the evaluated parameters).

A base-to-novel class view (``--dataset dtd-base`` / ``dtd-novel``, :mod:`promptbias.protocols`) is scored
on the test and val images of its classes with its class names; both read ``runs/dtd-base/…``.
"""

from __future__ import annotations

import time
from typing import Any

import click

from promptbias import paths
from promptbias.config import SEED, RunContext, method_trains
from promptbias.settings import Settings


def accuracy_report(predictions: Any, labels: Any, n_classes: int) -> dict[str, Any]:
    """Micro accuracy, macro accuracy (mean over classes present) and per-class accuracy, in percent."""
    import torch

    correct = (predictions == labels).float()
    per_class_total = torch.bincount(labels, minlength=n_classes).float()
    per_class_correct = torch.bincount(labels, weights=correct, minlength=n_classes)
    present = per_class_total > 0
    per_class = torch.where(present, 100.0 * per_class_correct / per_class_total.clamp(min=1), torch.nan)
    return {
        "accuracy": 100.0 * float(correct.mean()) if len(labels) else float("nan"),
        "macro_accuracy": float(per_class[present].mean()) if present.any() else float("nan"),
        "per_class": [None if torch.isnan(v) else float(v) for v in per_class],
    }


def image_features(
    method: Any, clip: Any, pictures: Any, batch_size: int, precision: str, desc: str = ""
) -> Any:
    """The method's L2-normalised image features of every uint8 image (N×3×S×S) → N×E on the CPU."""
    import torch

    from promptbias.data.images import normalize
    from promptbias.model.precision import autocast
    from promptbias.progress import progress_bar

    device = clip.device
    feats = []
    with torch.no_grad(), autocast(device, precision), progress_bar(len(pictures), desc, "img") as bar:
        for start in range(0, len(pictures), batch_size):
            x = normalize(
                pictures[start : start + batch_size].to(device, non_blocking=True), clip.mean, clip.std
            )
            feats.append(method.image_features(clip.model, x).cpu())  # B×E
            bar.update(len(feats[-1]))
    return torch.cat(feats) if feats else torch.zeros(0, 0)


def predict(
    method: Any,
    clip: Any,
    pictures: Any,
    batch_size: int,
    precision: str,
    desc: str = "",
    features: Any = None,
) -> Any:
    """Arg-max class for every image; text features computed once. ``features`` (N×E, from
    :func:`image_features`, e.g. memoised) replaces ``pictures`` and skips the image tower; the logits
    are taken over the same batch slices either way, so the predictions are identical."""
    import torch

    from promptbias.model.precision import autocast

    if features is None:
        features = image_features(method, clip, pictures, batch_size, precision, desc)
    device = clip.device
    preds = []
    with torch.no_grad(), autocast(device, precision):
        text = method.text_features(clip.model)  # C×E, once per evaluation
        scale = clip.model.logit_scale.exp()
        for start in range(0, len(features), batch_size):
            img = features[start : start + batch_size].to(device)  # B×E
            preds.append((scale * img @ text.to(img.dtype).T).argmax(-1).cpu())  # B×C → B
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def evaluate_run(cfg: dict[str, Any], job: Any, dataset: str, method_id: str, seed: int) -> dict[str, Any]:
    """Evaluate and write the metrics (``job``: the bound job, whose params the record states)."""
    import torch

    from promptbias.data import images, splits
    from promptbias.io import write_json
    from promptbias.methods import Method
    from promptbias.protocols import train_source
    from promptbias.runs import dataset_info, load_backbone, load_method

    # seeded as in train: a randomly initialised backbone (pretrained: null) is then the one trained on
    torch.manual_seed(seed)
    clip = load_backbone(cfg)
    ds = dataset_info(cfg, dataset)
    # the split first: a hand-edited one is named as the cause (the method would only say "another split")
    s = Settings.of(cfg)
    root, cache, precision, batch = (
        s.data.root,
        s.data.cache_images,
        s.model.precision,
        s.train.eval_batch_size,
    )
    fewshot = splits.load_fewshot(root, dataset, s.data.shots, seed, split=ds.raw_split)
    method = load_method(cfg, clip, ds, method_id, seed, check_splits=True)

    t0 = time.perf_counter()
    test_items = ds.split["test"]
    desc = f"{dataset}/{method_id}/seed{seed} test"
    if method.vision_is_constant:  # the frozen image tower alone: the same features for every seed
        from promptbias import frozen_features

        def encode_test_images() -> Any:  # only on a memo miss: a hit reads no image at all
            pictures, _ = images.load_eval_images(root, ds.data, test_items, clip.image_size, cache=cache)
            return image_features(method, clip, pictures, batch, precision, desc)

        test_f, _ = frozen_features.memo(
            cfg, clip, ds.data, [item[0] for item in test_items], encode_test_images
        )
        # the labels load_eval_images would return (it skips no image here: a bad one raises)
        test_y = torch.tensor([int(item[1]) for item in test_items])
        test_pred = predict(method, clip, None, batch, precision, features=test_f)
    else:
        test_x, test_y = images.load_eval_images(root, ds.data, test_items, clip.image_size, cache=cache)
        test_pred = predict(method, clip, test_x, batch, precision, desc=desc)
    seconds = time.perf_counter() - t0
    test = accuracy_report(test_pred, test_y, len(ds.classnames))

    val_x, val_y = images.load_eval_images(root, ds.data, fewshot["val"], clip.image_size, cache=cache)
    val_pred = predict(method, clip, val_x, batch, precision, desc=f"{dataset}/{method_id}/seed{seed} val")
    val = accuracy_report(val_pred, val_y, len(ds.classnames))

    status, trained = "ok", None
    if method_trains(method_id):
        header = Method.read_header(paths.run_file(train_source(dataset), method_id, seed, paths.PARAMS))
        status, trained = header["status"], header["identity"]
    metrics = {
        "dataset": dataset,
        "method": method_id,
        "seed": seed,
        "accuracy": round(test["accuracy"], 4),
        "macro_accuracy": round(test["macro_accuracy"], 4),
        "val_accuracy": round(val["accuracy"], 4),
        "n_test": len(test_y),
        "n_val": len(val_y),
        "n_classes": len(ds.classnames),
        "status": status,
    }  # results only: a DVC metric, so `dvc metrics diff` shows what changed in the results
    speed = round(len(test_y) / seconds, 2) if seconds > 0 else None
    out, sidecar = (
        paths.metrics_json(dataset, method_id, seed),
        paths.per_class_json(dataset, method_id, seed),
    )
    write_json(
        sidecar,
        {
            "dataset": dataset,
            "method": method_id,
            "seed": seed,
            "classnames": ds.classnames,
            "accuracy": test["per_class"],
            **job.record(),
            "evaluated": trained,  # the training identity of the evaluated parameters (None: zero-shot)
            "eval_images_per_second": speed,  # timings live here, not in the metrics file
        },
    )
    write_json(out, metrics)
    return metrics


@click.command("evaluate")
@click.option("--dataset", required=True, help="Dataset name (see params sweep.datasets).")
@click.option("--method", "method_id", required=True, help="zeroshot | prompt | bias | prompt-d<D>-n<N>.")
@click.option("--seed", required=True, type=SEED, help="Few-shot split and training seed of the run.")
@click.option("--device", default=None, help="Override device (auto | cpu | cuda).")
@click.pass_obj
def evaluate_command(ctx: RunContext, dataset: str, method_id: str, seed: int, device: str | None) -> None:
    """Top-1 (micro), macro and per-class accuracy on the full test split."""
    from promptbias.pipeline.bind import bind_job

    cfg = ctx.config_with({"device": ("--device", device)})  # validated like the params
    job = bind_job(ctx, cfg, "evaluate", {"dataset": dataset, "method": method_id, "seed": seed})
    m = evaluate_run(cfg, job, dataset, method_id, seed)
    click.echo(
        f"{dataset}/{method_id}/seed{seed}: accuracy {m['accuracy']:.2f}% (macro {m['macro_accuracy']:.2f}%, "
        f"val {m['val_accuracy']:.2f}%) on {m['n_test']} test images"
    )
