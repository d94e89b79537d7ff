"""A training job's identity and its resume state (``checkpoint.pt``).

    identity = job_identity(settings, job, data)     # params values, input digests, backbone, code, torch
    ckpt = Checkpoint(run_dir / "checkpoint.pt", identity)
    state = ckpt.read()          # the saved state, only when this job wrote it (else None, and why)
    ckpt.write(method, optimizer, epoch, history, status)     # atomically, after every epoch
    ckpt.remove()                # once the job has written its outputs: a forced rerun retrains

A checkpoint resumes only the job with the same identity: the params values it read, the content of
the split files and of the train images, the backbone weights, the promptbias code and the torch
build. ``TRAINED_IDENTITY`` is the part kept in params.safetensors (what was trained, on what), which
evaluate and probe check; it leaves out the code, so a refactor keeps the learned file's bytes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import click

# the part of a job's identity kept in params.safetensors (what was trained, on what): evaluate and probe
# check it; the code and torch build decide only whether a checkpoint may resume
TRAINED_IDENTITY = ("job", "params", "inputs", "backbone")


def job_identity(s: Any, job: Any, data: Any) -> dict[str, Any]:
    """Everything that decides the learned tensors (``s``: the job's Settings; ``data``: its TrainingData,
    which holds the input digests): a checkpoint resumes only the job with this identity."""
    import torch

    from promptbias import identity

    return {
        "job": job.name,
        "params": job.params,
        "inputs": data.digests,
        "backbone": identity.backbone({"name": s.model.name, "pretrained": s.model.pretrained}),
        "code": identity.code(),
        "torch": torch.__version__,
    }


class Checkpoint:
    """``checkpoint.pt`` of one job: written after every epoch, read back only by the same job."""

    def __init__(self, path: Path, identity: dict[str, Any]) -> None:
        self.path, self.identity = path, identity

    def read(self) -> dict[str, Any] | None:
        """The saved state when this job wrote it, else None (with a line saying why it starts over)."""
        import torch

        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or foreign: RuntimeError, EOFError, UnpicklingError, …
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
            click.echo(f"warning: {self.path}: unreadable checkpoint ({reason}) — starting over", err=True)
            return None
        saved = json.loads(state["identity"]) if isinstance(state, dict) and "identity" in state else None
        if saved != self.identity:
            from promptbias.identity import differences

            why = (
                ", ".join(differences(saved, self.identity)[:4]) if isinstance(saved, dict) else "no identity"
            )
            click.echo(f"{self.path}: written by another job (differs in: {why}) — starting over", err=True)
            return None
        return state

    def write(self, method: Any, optimizer: Any, epoch: int, history: list[dict], status: str) -> None:
        import torch

        from promptbias.io import atomic_path

        state = {
            "method": method.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "history": json.dumps(history),
            "identity": json.dumps(self.identity, sort_keys=True),
            "status": status,
        }
        buffer = io.BytesIO()  # serialise first: a full disk then fails as OSError(ENOSPC) in the write
        torch.save(state, buffer)
        with atomic_path(self.path, suffix=".pt") as tmp:
            tmp.write_bytes(buffer.getvalue())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
