"""Train one method on one dataset/seed with the paper's recipe (DESIGN.md §5).

    promptbias train --dataset eurosat --method prompt --seed 1 [--epochs 10 --lr 0.0025 --batch-size 32]

16 shots, SGD (momentum 0.9, weight decay 5e-4), one constant warm-up epoch at 1e-5, then a cosine
schedule stepped per epoch: lr(e) = lr·½(1+cos(π(e−w)/T)) for e ≥ w (T = epochs). The last partial batch
is dropped when N ≥ batch. bf16 autocast on CUDA, fp32 on CPU. Text features for all classes are computed
once per step (once per run when no learnable tensor reaches the text tower).

``--dataset <ds>-base`` trains on the base classes of the seed's few-shot split (CoCoOp's base-to-novel
protocol, :mod:`promptbias.protocols`) into ``runs/<ds>-base/…``; a novel view is never trained.

Outputs in ``runs/<ds>/<method>/seed<S>/``: ``params.safetensors`` (learned tensors, with the job's
identity in the header), ``curve.csv`` (epoch, lr, loss, train accuracy: a DVC plot), ``train.json``
(per-epoch loss/lr/accuracy, images/s, the job's params values and identity, provenance) and
``dvclive/`` (per-epoch DVCLive logs, when the project is a DVC repository).

A failing job never touches a finished job's outputs: the command's options are validated with the params
(:meth:`promptbias.config.RunContext.config_with`) and the inputs when they are loaded, all before anything
is written; the outputs are replaced only once every epoch is done, each file atomically, and DVCLive
writes into ``.dvclive.staging/`` beside ``dvclive/``, swapped into place whole with the other outputs
(:class:`LiveLog`). A failure at any epoch leaves the earlier run's files byte for byte (plus, after a
finished epoch, this job's ``checkpoint.pt`` to resume from).

Resume: a checkpoint is written atomically after every epoch (``checkpoint.pt``: method, optimizer,
epoch, history, identity) and removed when the job has written its outputs. A rerun resumes from it only
when its identity is this job's — the params values, the content of the split files and of the train
images, the backbone weights, the code and the torch build — and then ends with exactly the result of an
uninterrupted run (each epoch's shuffling and augmentation come from a generator seeded by (seed,
epoch)). Anything else starts over, so a forced rerun (``dvc repro -f``, ``snakemake --forcerun``)
retrains. SIGTERM (SLURM preemption or ``scontrol requeue``) stops at the next step with the last epoch
checkpointed and exit status 75; a SIGTERM that arrives once all epochs are done lets the job finish. A non-finite loss stops
the run with status "diverged" and keeps the last finite epoch's parameters.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from promptbias import paths, protocols
from promptbias.checkpoint import TRAINED_IDENTITY, Checkpoint, job_identity
from promptbias.config import SEED, RunContext
from promptbias.errors import UserError
from promptbias.settings import Settings

# EX_TEMPFAIL, "try again". Nothing requeues on this status: under SLURM the job is requeued by SLURM itself
# (sbatch --requeue, workflow/profiles/slurm) and restarts its batch script; elsewhere a rerun (Snakemake's
# `retries`, or the user) resumes from the checkpoint
PREEMPTED_EXIT_CODE = 75


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


def epoch_generator(seed: int, epoch: int) -> Any:
    import torch

    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class _Preempted(Exception):
    pass


@dataclass
class TrainingData:
    """The few-shot train images of one seed, their augmentation and the batching they imply."""

    pictures: list[Any]  # uint8 3×H×W each
    labels: Any  # N long, on the device
    augment: Any
    batch_size: int
    digests: dict[str, str]  # content identity of the split files and the images

    @property
    def n(self) -> int:
        return len(self.pictures)

    @property
    def steps_per_epoch(self) -> int:  # the last partial batch is dropped when N ≥ batch
        return self.n // self.batch_size if self.n >= self.batch_size else math.ceil(self.n / self.batch_size)


def load_training_data(s: Settings, dataset: str, seed: int, clip: Any) -> TrainingData:
    from promptbias import identity
    from promptbias.data import images, splits

    root, shots = s.data.root, s.data.shots
    data = protocols.data_of(dataset)  # a class view (dtd-base) reads its dataset's files
    split = splits.load_split(root, data)
    fewshot = splits.load_fewshot(root, dataset, shots, seed, split=split)
    if not fewshot["train"]:
        raise UserError(
            f"{paths.split_json(root, data, shots, seed)}: the train split is empty — check that "
            f"{paths.raw_json(root, data)} lists train images, then rerun `promptbias split`"
        )
    rels = [str(item[0]) for item in fewshot["train"]]
    digests = {
        **splits.split_digests(root, data, shots, seed),
        "train_images": identity.listing_digest(rels, identity.sha256_files(paths.raw_dir(root, data), rels)),
    }
    pictures, labels = images.load_train_images(root, data, fewshot["train"], max_side=None)
    augment = images.TrainAugment(clip.image_size, scale=s.train.crop_scale, device=clip.device)
    return TrainingData(pictures, labels.to(clip.device), augment, s.train.batch_size, digests)


class _SigtermFlag:
    """SIGTERM (SLURM preemption) sets a flag that the epoch loop checks between steps."""

    def __init__(self) -> None:
        self.raised = False

    def __enter__(self) -> _SigtermFlag:
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.raised = True

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def train_run(
    cfg: dict[str, Any],
    job: Any,
    dataset: str,
    method_id: str,
    seed: int,
    sigterm: _SigtermFlag | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and write the run folder; returns the train.json record. ``job``: the bound job (its params);
    ``sigterm``: the SIGTERM flag installed by the command (none: a SIGTERM kills as usual)."""
    import torch

    from promptbias.io import provenance, remove_stale_temps, write_json
    from promptbias.model.precision import autocast, precision_name
    from promptbias.runs import dataset_info, load_backbone

    s = Settings.of(cfg)
    m = s.method(method_id)
    if protocols.train_source(dataset) != dataset:
        raise UserError(
            f"--dataset {dataset}: this view is never trained on (it evaluates the tensors of "
            f"{protocols.train_source(dataset)}) — train `--dataset {protocols.train_source(dataset)}`"
        )
    if m.lr is None:
        raise UserError(
            f"{m.kind} needs no training — run `promptbias evaluate --method {method_id}` directly"
        )
    out = paths.run_dir(dataset, method_id, seed)
    remove_stale_temps(out / paths.CHECKPOINT)  # a killed attempt's (bind_job sweeps the declared outputs)
    torch.manual_seed(seed)

    clip = load_backbone(cfg)
    ds = dataset_info(cfg, dataset)
    data = load_training_data(s, dataset, seed, clip)
    identity = job_identity(s, job, data)
    method, optimizer, schedule = _build(s, m, clip, ds, seed)
    epochs = s.train.epochs
    checkpoint = Checkpoint(out / paths.CHECKPOINT, identity)
    history, start_epoch, status = _resume(checkpoint, method, optimizer, out, epochs)

    precision = s.model.precision
    fixed_text = None
    if method.text_is_constant:
        with torch.no_grad(), autocast(clip.device, precision):
            fixed_text = method.text_features(clip.model)

    live = LiveLog(out / paths.LIVE_DIR).open(history)  # the last step before the epochs: all is checked
    t_start = time.perf_counter()
    sigterm = sigterm or _SigtermFlag()
    try:
        for epoch in range(start_epoch, epochs):
            if status != "ok":
                break
            record = _train_epoch(
                method, clip, data, optimizer, schedule, epoch, seed, precision, fixed_text, sigterm,
                label=f"{dataset}/{method_id}/seed{seed} epoch {epoch + 1}/{epochs}",
                fault_label=f"{out}/epoch{epoch + 1}",  # fault points …/epoch3.step2.
                progress=progress,
            )  # fmt: skip
            if record is None:
                status = "diverged"
            else:
                history.append(record)
                live.log(record)
                done_here = history[start_epoch:]
                eta = (epochs - epoch - 1) * sum(h["seconds"] for h in done_here) / len(done_here)
                click.echo(
                    f"{dataset}/{method_id}/seed{seed} {epoch_line(record, epochs, eta)}"
                )  # stdout: stderr is for errors
            checkpoint.write(method, optimizer, epoch, history, status)
            if sigterm.raised and epoch + 1 < epochs:
                raise _Preempted
    except _Preempted:
        live.discard()
        click.echo(f"preempted: checkpointed {out} after epoch {len(history)}; rerun to resume", err=True)
        sys.exit(PREEMPTED_EXIT_CODE)
    except BaseException:
        live.discard()  # the finished run's dvclive/ stays as it was
        raise
    live.end()
    # all epochs done: a SIGTERM from here on no longer stops the job (its outputs come next)
    trained = {k: identity[k] for k in TRAINED_IDENTITY}  # code-independent: refactors keep the bytes
    method.save(out / paths.PARAMS, identity=trained, status=status)
    write_curve(out / paths.CURVE, history)
    live.publish()
    record = {
        "dataset": dataset,
        "method": method_id,
        "seed": seed,
        "status": status,
        **_summary(history, method, data),
        "wall_seconds_this_process": time.perf_counter() - t_start,
        "device": str(clip.device),
        "precision": precision_name(clip.device, precision),
        **job.record(),
        "identity": identity,
        "config": cfg,
        "provenance": provenance(),
    }
    write_json(out / paths.TRAIN_RECORD, record)  # last: its presence means the job is complete
    checkpoint.remove()  # done: a forced rerun must retrain, not resume
    return record


def _build(s: Settings, m: Any, clip: Any, ds: Any, seed: int) -> tuple[Any, Any, Schedule]:
    """The method (prompts initialised from the run seed), its SGD optimizer and the lr schedule."""
    import torch

    from promptbias.methods import build_method

    extra = {"init_seed": seed} if m.kind == "prompt" else {}
    method = build_method(m.kind, clip, ds.classnames, ds.template, **m.hparams, **extra)
    optimizer = torch.optim.SGD(
        [p for p in method.parameters() if p.requires_grad],
        lr=s.train.warmup_lr,
        momentum=s.train.momentum,
        weight_decay=s.train.weight_decay,
    )
    return method, optimizer, Schedule(m.lr, s.train.epochs, s.train.warmup_epochs, s.train.warmup_lr)


def _resume(
    checkpoint: Checkpoint, method: Any, optimizer: Any, out: Path, epochs: int
) -> tuple[list[dict[str, Any]], int, str]:
    """(history, first epoch to run, status): from this job's checkpoint, else a fresh start."""
    state = checkpoint.read()
    if state is None:
        return [], 0, "ok"
    method.load_state_dict(state["method"])
    optimizer.load_state_dict(state["optimizer"])
    start_epoch = int(state["epoch"]) + 1
    click.echo(f"resuming {out} after epoch {start_epoch}/{epochs}", err=True)
    return json.loads(state["history"]), start_epoch, state["status"]


def _train_epoch(
    method: Any,
    clip: Any,
    data: TrainingData,
    optimizer: Any,
    schedule: Schedule,
    epoch: int,
    seed: int,
    precision: str,
    fixed_text: Any,
    sigterm: _SigtermFlag,
    label: str,
    fault_label: str,
    progress: bool,
) -> dict[str, Any] | None:
    """One epoch at the schedule's learning rate; its record, or None when the loss became non-finite (the
    method's parameters are then restored to the start of the epoch)."""
    import torch

    from promptbias.data.images import normalize
    from promptbias.io import fault_point
    from promptbias.model.precision import autocast

    lr = schedule(epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    gen = epoch_generator(seed, epoch)
    order = torch.randperm(data.n, generator=gen)
    snapshot = {k: v.clone() for k, v in method.state_dict().items()}
    t0 = time.perf_counter()
    loss_sum, correct, seen = 0.0, 0, 0
    bar = _bar(data.steps_per_epoch, label, progress)
    for step in range(data.steps_per_epoch):
        fault_point(f"{fault_label}.step{step + 1}.")
        if sigterm.raised:
            raise _Preempted  # the last epoch checkpoint is intact; this epoch reruns on resume
        idx = order[step * data.batch_size : (step + 1) * data.batch_size]
        x = data.augment([data.pictures[i] for i in idx.tolist()], gen)  # B×3×S×S uint8
        x = normalize(x.to(clip.device, non_blocking=True), clip.mean, clip.std)  # B×3×S×S float
        y = data.labels[idx.to(clip.device)]
        with autocast(clip.device, precision):
            logits = method.logits(clip.model, x, fixed_text)  # B×C
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
        if not torch.isfinite(loss):
            method.load_state_dict(snapshot)  # keep the last finite epoch's parameters
            click.echo(
                f"warning: {label}: loss became non-finite at step {step + 1} — recorded as diverged; "
                f"keeping the parameters of epoch {epoch}",
                err=True,
            )
            bar.close()
            return None
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(idx)
        correct += int((logits.argmax(-1) == y).sum())
        seen += len(idx)
        bar.update(1)
        bar.set_postfix(
            loss=f"{loss_sum / seen:.3f}", lr=f"{lr:.2e}", img_s=f"{seen / (time.perf_counter() - t0):.1f}"
        )
    bar.close()
    if clip.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {
        "epoch": epoch + 1,
        "lr": lr,
        "loss": loss_sum / max(seen, 1),
        "accuracy": 100.0 * correct / max(seen, 1),
        "seconds": seconds,
        "images_per_second": seen / seconds if seconds > 0 else None,
    }


CURVE_COLUMNS = ("epoch", "lr", "loss", "accuracy")  # no timings: the same run gives the same bytes


def write_curve(path: Path, history: list[dict[str, Any]]) -> None:
    """The per-epoch curve as CSV (a DVC plot of the train stage; written atomically)."""
    from promptbias.io import write_text

    rows = [",".join(CURVE_COLUMNS)]
    rows += [
        ",".join(repr(float(h[c])) if c != "epoch" else str(h[c]) for c in CURVE_COLUMNS) for h in history
    ]
    write_text(path, "\n".join(rows) + "\n")


def epoch_line(record: dict[str, Any], epochs: int, eta_seconds: float) -> str:
    """The progress line of one finished epoch (in the job's log and on the console)."""
    eta = time.strftime("%H:%M:%S", time.gmtime(max(0.0, eta_seconds)))
    speed = f"{record['images_per_second']:.1f} img/s" if record["images_per_second"] else "-"
    return (
        f"epoch {record['epoch']}/{epochs}: lr {record['lr']:.2e}, loss {record['loss']:.4f}, "
        f"train acc {record['accuracy']:.1f}%, {speed}, ETA {eta}"
    )


def _summary(history: list[dict[str, Any]], method: Any, data: TrainingData) -> dict[str, Any]:
    """train.json's summary of the epochs (throughput over all epochs of all processes)."""
    train_seconds = sum(h["seconds"] for h in history)
    total_images = sum(h["images_per_second"] * h["seconds"] for h in history if h["images_per_second"])
    return {
        "epochs_completed": len(history),
        "parameters": method.num_learnable(),
        "train_images": data.n,
        "steps_per_epoch": data.steps_per_epoch,
        "history": history,
        "train_seconds": train_seconds,
        "images_per_second": total_images / max(train_seconds, 1e-9),
    }


def _bar(total: int, desc: str, enabled: bool):
    """Steps of one epoch on a terminal only (a log gets the epoch lines of :func:`epoch_line`)."""
    from promptbias.progress import progress_bar

    return progress_bar(total, desc, "step", enabled=enabled and sys.stdout.isatty())


class LiveLog:
    """DVCLive's logs of one run, written whole or not at all (like every other output of the job).

        live = LiveLog(run_dir / "dvclive").open(history)   # into .dvclive.staging/, rebuilt from history
        live.log(record)                                     # one epoch, one DVCLive step
        live.publish()      # all epochs done: the staging folder replaces dvclive/ (crash-safe)
        live.discard()      # the job failed: dvclive/ is left as it was

    Only inside a DVC repository: DVCLive would otherwise ``dvc init`` the enclosing git repository and
    stage files there (a job never touches git); outside one every call does nothing. No DVC experiment
    and no dvc.yaml (parallel-safe). The staging folder is rebuilt from the checkpoint's ``history`` on every
    start, so a run killed between an epoch's log and its checkpoint resumes with one row per epoch.

    The swap is two renames: ``dvclive/`` → ``.dvclive.old/``, staging → ``dvclive/``, then
    ``.dvclive.old/`` is deleted. :meth:`recover` (at every open) finishes a swap a kill interrupted: with
    ``dvclive/`` gone it puts ``.dvclive.old/`` back (the job had not finished: its checkpoint is still
    there and the rerun publishes again), else it deletes ``.dvclive.old/``.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.staging = folder.with_name(f".{folder.name}.staging")
        self.old = folder.with_name(f".{folder.name}.old")
        self._live: Any = None
        self._ended = False

    def open(self, history: list[dict[str, Any]]) -> LiveLog:
        if not _inside_dvc_repo(Path.cwd()):
            return self
        from dvclive import Live

        self.recover()
        shutil.rmtree(self.staging, ignore_errors=True)  # an interrupted attempt's: rebuilt from history
        with contextlib.redirect_stdout(sys.stderr):
            self._live = Live(
                dir=str(self.staging), resume=False, save_dvc_exp=False, dvcyaml=False, report=None
            )
        for record in history:
            self.log(record)
        return self

    def recover(self) -> None:
        """Finish the swap of an earlier attempt that was killed between its renames."""
        if not self.old.exists():
            return
        if self.folder.exists():
            shutil.rmtree(self.old)
        else:
            os.replace(self.old, self.folder)

    def log(self, record: dict[str, Any]) -> None:
        """One epoch's record as one DVCLive step."""
        if self._live is None:
            return
        for key in ("loss", "accuracy", "lr", "images_per_second"):
            if record.get(key) is not None:
                self._live.log_metric(f"train/{key}", record[key])
        self._live.next_step()

    def end(self) -> None:
        if self._live is not None and not self._ended:
            self._ended = True
            with contextlib.redirect_stdout(sys.stderr):
                self._live.end()

    def publish(self) -> None:
        """Put the complete logs in place of the previous ones."""
        if self._live is None:
            return
        from promptbias.io import fault_point

        self.end()
        self.staging.mkdir(parents=True, exist_ok=True)  # no epoch logged (diverged at once): empty logs
        if self.folder.exists():
            os.replace(self.folder, self.old)
            fault_point(f"{self.folder}.swap")  # tests: a kill between the two renames
        os.replace(self.staging, self.folder)
        shutil.rmtree(self.old, ignore_errors=True)

    def discard(self) -> None:
        """Drop this attempt's logs (the job failed or was preempted): the published ones stay."""
        if self._live is None:
            return
        with contextlib.suppress(Exception):
            self.end()
        shutil.rmtree(self.staging, ignore_errors=True)


def _inside_dvc_repo(folder: Path) -> bool:
    return any((parent / ".dvc").is_dir() for parent in (folder, *folder.parents))


@click.command("train")
@click.option("--dataset", required=True, help="Dataset name (see params sweep.datasets).")
@click.option("--method", "method_id", required=True, help="prompt | bias | prompt-d<D>-n<N>.")
@click.option("--seed", required=True, type=SEED, help="Few-shot split and initialisation seed.")
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
    from promptbias.config import method_kind, method_trains
    from promptbias.pipeline.bind import bind_job

    # the options go through the params validation (NaN, a negative lr, zero epochs or batch: one line)
    lr_given = lr if method_trains(method_id) else None  # zero-shot: train_run says it needs no training
    cfg = ctx.config_with(
        {
            "train.epochs": ("--epochs", epochs),
            "train.batch_size": ("--batch-size", batch_size),
            f"methods.{method_kind(method_id)}.lr": ("--lr", lr_given),
            "device": ("--device", device),
        }
    )
    job = bind_job(ctx, cfg, "train", {"dataset": dataset, "method": method_id, "seed": seed})
    try:
        with _SigtermFlag() as sigterm:  # for the whole job: a late SIGTERM never fails a finished job
            record = train_run(cfg, job, dataset, method_id, seed, sigterm)
            last = record["history"][-1] if record["history"] else {}
            click.echo(
                f"{dataset}/{method_id}/seed{seed}: {record['status']}, {record['epochs_completed']} epochs, "
                f"loss {last.get('loss', float('nan')):.4f}, {record['images_per_second']:.1f} img/s, "
                f"{record['parameters']} learnable parameters"
            )
    except OSError as exc:  # a full disk outside atomic_path (e.g. the DVCLive logs)
        from promptbias.io import disk_full_error

        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full_error(exc.filename or paths.run_dir(dataset, method_id, seed)) from None
        raise
