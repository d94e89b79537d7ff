"""Train one method on one dataset/seed with the paper's recipe (DESIGN.md §5).

    promptbias train --dataset eurosat --method prompt --seed 1 [--epochs 10 --lr 0.0025 --batch-size 32]

16 shots, SGD (momentum 0.9, weight decay 5e-4), one constant warm-up epoch at 1e-5, then a cosine
schedule stepped per epoch: lr(e) = lr·½(1+cos(π(e−w)/T)) for e ≥ w (T = epochs). The last partial batch
is dropped when N ≥ batch. bf16 autocast on CUDA, fp32 on CPU. Text features for all classes are computed
once per step (once per run when no learnable tensor reaches the text tower).

Outputs in ``runs/<ds>/<method>/seed<S>/``: ``params.safetensors`` (learned tensors only), ``train.json``
(per-epoch loss/lr/accuracy, wall time, images/s, parameter count, resolved config, provenance) and
``dvclive/``. A checkpoint is written atomically after every epoch (``checkpoint.pt``: method, optimizer,
epoch, history); a rerun resumes from it and ends with exactly the result of an uninterrupted run because
each epoch's shuffling and augmentation come from a generator seeded by (seed, epoch). A non-finite loss
stops the run with status "diverged" and keeps the last finite epoch's parameters.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from promptbias.config import RunContext, method_settings
from promptbias.errors import UserError
from promptbias.runs import run_dir

CHECKPOINT = "checkpoint.pt"
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: the SLURM profile requeues on it


@dataclass(frozen=True)
class Schedule:
    """The reference's per-epoch learning rate: constant warm-up, then cosine over all epochs."""

    lr: float
    epochs: int
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5

    def __call__(self, epoch: int) -> float:  # epoch is 0-based
        if epoch < self.warmup_epochs:
            return self.warmup_lr
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - self.warmup_epochs) / self.epochs))


def training_settings(cfg: dict[str, Any], method_id: str) -> dict[str, Any]:
    """Exactly the keys that decide a training run (also hashed to validate a checkpoint)."""
    kind, hparams = method_settings(cfg, method_id)
    return {
        "method": method_id,
        "kind": kind,
        "hparams": {k: v for k, v in hparams.items() if k != "lr"},
        "lr": hparams.get("lr"),
        "train": {k: cfg["train"][k] for k in sorted(cfg["train"]) if k != "eval_batch_size"},
        "shots": cfg["data"]["shots"],
        "model": {k: cfg["model"].get(k) for k in ("name", "pretrained", "precision")},
    }


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def epoch_generator(seed: int, epoch: int) -> Any:
    import torch

    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def autocast(device: Any, precision: str) -> contextlib.AbstractContextManager:
    import torch

    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class _Preempted(Exception):
    pass


def train_run(
    cfg: dict[str, Any], dataset: str, method_id: str, seed: int, progress: bool = True
) -> dict[str, Any]:
    """Train and write the run folder; returns the train.json record."""
    import torch

    from promptbias.data import images, splits
    from promptbias.io import atomic_path, provenance, remove_stale_temps, write_json
    from promptbias.methods import build_method
    from promptbias.runs import dataset_info, load_backbone

    kind, hparams = method_settings(cfg, method_id)
    if kind == "zeroshot":
        raise UserError("zeroshot needs no training — run `promptbias evaluate --method zeroshot` directly")
    settings = training_settings(cfg, method_id)
    tcfg = cfg["train"]
    out = run_dir(dataset, method_id, seed)
    for name in (CHECKPOINT, "params.safetensors", "train.json"):
        remove_stale_temps(out / name)  # left by a killed earlier attempt of this job
    torch.manual_seed(seed)

    clip = load_backbone(cfg)
    device = clip.device
    ds = dataset_info(cfg, dataset)
    fewshot = splits.load_fewshot(cfg["data"]["root"], dataset, cfg["data"]["shots"], seed)
    if not fewshot["train"]:
        raise UserError(
            f"{splits.fewshot_path(cfg['data']['root'], dataset, cfg['data']['shots'], seed)}: the train split is "
            f"empty — check that data/raw/{dataset}.json lists train images, then rerun `promptbias split`"
        )
    pictures, labels = images.load_train_images(cfg["data"]["root"], dataset, fewshot["train"], max_side=None)
    crop_scale = tuple(tcfg.get("crop_scale", (0.08, 1.0)))  # RandomResizedCrop area range
    augment = images.TrainAugment(clip.image_size, scale=crop_scale, device=device)
    n = len(pictures)
    batch = tcfg["batch_size"]
    drop_last = n >= batch
    steps_per_epoch = n // batch if drop_last else math.ceil(n / batch)

    extra = {"init_seed": seed} if kind == "prompt" else {}
    method = build_method(kind, clip, ds.classnames, ds.template, **{**hparams, **extra})
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params,
        lr=tcfg.get("warmup_lr", 1e-5),
        momentum=tcfg.get("momentum", 0.9),
        weight_decay=tcfg.get("weight_decay", 5e-4),
    )
    schedule = Schedule(
        hparams["lr"], tcfg["epochs"], tcfg.get("warmup_epochs", 1), tcfg.get("warmup_lr", 1e-5)
    )
    digest = settings_hash(settings)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    status = "ok"
    ckpt_path = out / CHECKPOINT
    state = _read_checkpoint(ckpt_path) if ckpt_path.is_file() else None
    if state is not None:
        if state.get("settings_hash") == digest:
            method.load_state_dict(state["method"])
            optimizer.load_state_dict(state["optimizer"])
            history = json.loads(state["history"])
            start_epoch = int(state["epoch"]) + 1
            status = state.get("status", "ok")
            click.echo(f"resuming {out} after epoch {start_epoch}/{tcfg['epochs']}", err=True)
        else:
            click.echo(f"{ckpt_path}: made with other settings — starting over", err=True)

    precision = cfg["model"].get("precision", "auto")
    mean = torch.tensor(clip.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(clip.std, device=device).view(1, 3, 1, 1)
    model = clip.model
    fixed_text = None
    if method.text_is_constant:
        with torch.no_grad(), autocast(device, precision):
            fixed_text = method.text_features(model)
    labels = labels.to(device)

    def save_checkpoint(epoch: int, run_status: str) -> None:
        state = {
            "method": method.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "history": json.dumps(history),
            "settings_hash": digest,
            "status": run_status,
            "torch_rng": torch.get_rng_state(),
        }
        buffer = io.BytesIO()  # serialise first: a full disk then fails as OSError(ENOSPC) in the write
        torch.save(state, buffer)
        with atomic_path(ckpt_path, suffix=".pt") as tmp:
            tmp.write_bytes(buffer.getvalue())

    preempted = {"flag": False}

    def _on_sigterm(signum, frame):  # SLURM preemption: stop at the next step, exit for requeue
        preempted["flag"] = True

    previous_handler = signal.signal(signal.SIGTERM, _on_sigterm)
    live = _open_live(out / "dvclive", history)
    t_start = time.perf_counter()
    try:
        for epoch in range(start_epoch, tcfg["epochs"]):
            if status != "ok":
                break
            lr = schedule(epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            gen = epoch_generator(seed, epoch)
            order = torch.randperm(n, generator=gen)
            t0 = time.perf_counter()
            loss_sum, correct, seen = 0.0, 0, 0
            snapshot = {k: v.clone() for k, v in method.state_dict().items()}
            bar = _bar(
                steps_per_epoch,
                f"{dataset}/{method_id}/seed{seed} epoch {epoch + 1}/{tcfg['epochs']}",
                progress,
            )
            for step in range(steps_per_epoch):
                if preempted["flag"]:
                    raise _Preempted  # the last epoch checkpoint is intact; this epoch reruns on resume
                idx = order[step * batch : (step + 1) * batch]
                x = augment([pictures[i] for i in idx.tolist()], gen).to(
                    device, non_blocking=True
                )  # B×3×S×S uint8
                x = (x.float() / 255.0 - mean) / std
                y = labels[idx.to(device)]
                with autocast(device, precision):
                    logits = method.logits(model, x, fixed_text)  # B×C
                    loss = torch.nn.functional.cross_entropy(logits.float(), y)
                if not torch.isfinite(loss):
                    status = "diverged"
                    method.load_state_dict(snapshot)  # keep the last finite epoch's parameters
                    click.echo(
                        f"warning: {dataset}/{method_id}/seed{seed}: loss became non-finite at epoch {epoch + 1} step "
                        f"{step + 1} — recorded as diverged; keeping the parameters of epoch {epoch}",
                        err=True,
                    )
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(idx)
                correct += int((logits.argmax(-1) == y).sum())
                seen += len(idx)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{loss_sum / seen:.3f}",
                    lr=f"{lr:.2e}",
                    img_s=f"{seen / (time.perf_counter() - t0):.1f}",
                )
            bar.close()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            if status == "ok":
                record = {
                    "epoch": epoch + 1,
                    "lr": lr,
                    "loss": loss_sum / max(seen, 1),
                    "accuracy": 100.0 * correct / max(seen, 1),
                    "seconds": seconds,
                    "images_per_second": seen / seconds if seconds > 0 else None,
                }
                history.append(record)
                _log_live(live, record)
            save_checkpoint(epoch, status)
            if preempted["flag"] and epoch + 1 < tcfg["epochs"]:
                raise _Preempted
    except _Preempted:
        click.echo(f"preempted: checkpointed {out} after epoch {len(history)}; rerun to resume", err=True)
        sys.exit(PREEMPTED_EXIT_CODE)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        if live is not None:
            live.end()

    wall = time.perf_counter() - t_start
    method.save(out / "params.safetensors")
    total_images = sum(h["images_per_second"] * h["seconds"] for h in history if h["images_per_second"])
    record = {
        "dataset": dataset,
        "method": method_id,
        "seed": seed,
        "status": status,
        "epochs_completed": len(history),
        "parameters": method.num_learnable(),
        "train_images": n,
        "steps_per_epoch": steps_per_epoch,
        "history": history,
        "wall_seconds_this_process": wall,
        "train_seconds": sum(h["seconds"] for h in history),
        "images_per_second": total_images / max(sum(h["seconds"] for h in history), 1e-9),
        "device": str(device),
        "precision": "bf16"
        if (precision == "bf16" or (precision == "auto" and device.type == "cuda"))
        else "fp32",
        "settings": settings,
        "config": cfg,
        "provenance": provenance(),
    }
    write_json(out / "train.json", record)
    return record


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, leave=False, disable=not (enabled and sys.stderr.isatty()), file=sys.stderr
    )


def _read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint's state, or None (with a warning) when the file cannot be read: start over."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign: RuntimeError, EOFError, UnpicklingError, …
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        click.echo(f"warning: {path}: unreadable checkpoint ({reason}) — starting over", err=True)
        return None
    return state if isinstance(state, dict) else None


def _open_live(directory: Path, history: list[dict[str, Any]]):
    """DVCLive logger in the run's own folder (no DVC experiment, no dvc.yaml: parallel-safe).

    The folder is rebuilt from the checkpoint's ``history`` on every start, so a run killed between an
    epoch's log and its checkpoint (or mid-write of a log file) resumes with exactly one row per epoch.
    """
    try:
        from dvclive import Live
    except ImportError:  # pragma: no cover - dvclive is a dependency
        return None
    with contextlib.redirect_stdout(sys.stderr):
        live = Live(dir=str(directory), resume=False, save_dvc_exp=False, dvcyaml=False, report=None)
    for record in history:
        _log_live(live, record)
    return live


def _log_live(live: Any, record: dict[str, Any]) -> None:
    """One epoch's record as one DVCLive step."""
    if live is None:
        return
    for key in ("loss", "accuracy", "lr", "images_per_second"):
        if record.get(key) is not None:
            live.log_metric(f"train/{key}", record[key])
    live.next_step()


@click.command("train")
@click.option("--dataset", required=True, help="Dataset name (see params sweep.datasets).")
@click.option("--method", "method_id", required=True, help="prompt | bias | prompt-d<D>-n<N>.")
@click.option("--seed", required=True, type=int, help="Few-shot split and initialisation seed.")
@click.option("--epochs", type=int, default=None, help="Override train.epochs.")
@click.option("--batch-size", type=int, default=None, help="Override train.batch_size.")
@click.option("--lr", type=float, default=None, help="Override the method's learning rate.")
@click.option("--device", default=None, help="Override device (auto | cpu | cuda).")
@click.pass_obj
def train_command(
    ctx: RunContext,
    dataset: str,
    method_id: str,
    seed: int,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    device: str | None,
) -> None:
    """Train one method on one dataset and seed (resumes from its checkpoint)."""
    from promptbias.config import method_kind

    cfg = ctx.config
    if epochs is not None:
        cfg["train"]["epochs"] = epochs
    if batch_size is not None:
        cfg["train"]["batch_size"] = batch_size
    if lr is not None:
        cfg["methods"][method_kind(method_id)]["lr"] = lr
    if device is not None:
        cfg["device"] = device
    try:
        record = train_run(cfg, dataset, method_id, seed)
    except OSError as exc:  # a full disk outside atomic_path (e.g. the DVCLive logs)
        from promptbias.io import disk_full_error

        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full_error(exc.filename or run_dir(dataset, method_id, seed)) from None
        raise
    last = record["history"][-1] if record["history"] else {}
    click.echo(
        f"{dataset}/{method_id}/seed{seed}: {record['status']}, {record['epochs_completed']} epochs, "
        f"loss {last.get('loss', float('nan')):.4f}, {record['images_per_second']:.1f} img/s, "
        f"{record['parameters']} learnable parameters"
    )
