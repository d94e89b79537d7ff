"""GPU slots: each GPU job takes one free visible GPU, so ``--resources gpu=N`` means N jobs on N GPUs.

    from promptbias.devices import claim_gpu_slot
    slot = claim_gpu_slot()          # first thing in a GPU command, before torch touches CUDA
    # -> 2: CUDA_VISIBLE_DEVICES is now the third visible GPU only; None on a CPU-only machine

    promptbias gpu-slot -- python my_script.py ...   # run any command line under a claimed slot

Snakemake only *counts* GPUs (``resources: gpu=1``); it never says which one. A job therefore takes a
non-blocking ``flock`` on one lock file per visible GPU (``<lock_dir>/gpu-<id>.lock``), keeps the file
open for the life of the process (the kernel drops the lock when the process dies, even on SIGKILL)
and sets ``CUDA_VISIBLE_DEVICES`` to that one GPU. When every slot is taken it waits for one to free.

Visible GPUs are counted without initialising CUDA: ``CUDA_VISIBLE_DEVICES`` when set (its entries,
indices or UUIDs, keep their meaning), else ``nvidia-smi -L``, else none. Under SLURM
(``SLURM_JOB_ID`` set) the scheduler already assigned the GPUs: nothing is locked. A process that
already holds a slot (or runs under ``promptbias gpu-slot``, which sets ``PROMPTBIAS_GPU_SLOT``) keeps
it. Lock folder: ``lock_dir``, else ``$PROMPTBIAS_GPU_LOCK_DIR``, else ``<tmp>/promptbias-gpu-locks-<uid>``.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import click

SLOT_ENV = "PROMPTBIAS_GPU_SLOT"
LOCK_DIR_ENV = "PROMPTBIAS_GPU_LOCK_DIR"
_held: tuple[int, str, IO[bytes]] | None = None  # (slot, device id, open lock file) of this process


def visible_gpus() -> list[str]:
    """Device ids of the visible GPUs (CUDA_VISIBLE_DEVICES entries, else nvidia-smi indices)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [part.strip() for part in env.split(",") if part.strip()]
        out = []
        for dev in ids:  # CUDA stops at the first invalid entry ("-1" hides every GPU)
            if dev.startswith("-"):
                break
            out.append(dev)
        return out
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        res = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    n = sum(1 for line in res.stdout.splitlines() if line.startswith("GPU "))
    return [str(i) for i in range(n)] if res.returncode == 0 else []


def default_lock_dir() -> Path:
    env = os.environ.get(LOCK_DIR_ENV)
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / f"promptbias-gpu-locks-{os.getuid()}"


def _lock_name(dev: str) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", dev) + ".lock"


def _try_lock(path: Path) -> IO[bytes] | None:
    fh = open(path, "a+b")  # noqa: SIM115 — kept open for the life of the process on success
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n".encode())
    fh.flush()
    return fh


def claim_gpu_slot(lock_dir: Path | None = None, *, wait: bool = True, poll_s: float = 0.5) -> int | None:
    """Take a free visible GPU and make it the only one this process sees; None without GPUs.

    Returns the slot (index into the GPUs visible before the call). Idempotent within a process and
    under ``promptbias gpu-slot``. With ``wait=False`` a busy machine returns None instead of waiting.
    """
    global _held
    if _held is not None:
        return _held[0]
    inherited = os.environ.get(SLOT_ENV)
    if inherited is not None and os.environ.get("CUDA_VISIBLE_DEVICES") == inherited.split(":", 1)[-1]:
        return int(inherited.split(":", 1)[0])
    devices = visible_gpus()
    if not devices:
        return None
    if os.environ.get("SLURM_JOB_ID"):  # the scheduler assigned these GPUs to this job alone
        os.environ["CUDA_VISIBLE_DEVICES"] = devices[0]
        return 0
    folder = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    announced = False
    while True:
        for slot, dev in enumerate(devices):
            fh = _try_lock(folder / _lock_name(dev))
            if fh is not None:
                _held = (slot, dev, fh)
                os.environ["CUDA_VISIBLE_DEVICES"] = dev
                os.environ[SLOT_ENV] = f"{slot}:{dev}"
                return slot
        if not wait:
            return None
        if not announced:
            print(f"promptbias: all {len(devices)} GPU slots busy ({folder}); waiting", file=sys.stderr)
            announced = True
        time.sleep(poll_s)


@click.command(
    "gpu-slot",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option(
    "--lock-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Lock folder."
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def gpu_slot_command(lock_dir: Path | None, command: tuple[str, ...]) -> None:
    """Run COMMAND with one free GPU (CUDA_VISIBLE_DEVICES set; the lock lives as long as COMMAND).

    Example: promptbias gpu-slot -- python train_other.py --epochs 3
    """
    slot = claim_gpu_slot(lock_dir)
    if _held is not None:
        os.set_inheritable(_held[2].fileno(), True)  # exec keeps the locked file open in COMMAND
    if slot is not None:
        click.echo(
            f"promptbias: GPU slot {slot} (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']})",
            err=True,
        )
    try:
        os.execvp(command[0], list(command))
    except OSError as exc:
        from promptbias.errors import UserError

        raise UserError(f"gpu-slot: cannot run {command[0]!r} ({exc.strerror}) — check the command") from None
