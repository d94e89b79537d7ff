"""Atomic output writing and provenance snapshots.

Every output of promptbias is written through these helpers so that an interrupted job never leaves a
half-written file that Snakemake or DVC could mistake for a finished one::

    with atomic_path("metrics/x.json") as tmp:   # write to tmp, renamed onto the target on success
        tmp.write_text(...)
    write_json("metrics/x.json", {"accuracy": 0.9})

The temporary file lives in the target's folder (same filesystem, so ``os.replace`` is atomic) and is
removed when the block raises. A full disk (``ENOSPC``/``EDQUOT`` while writing, syncing or renaming)
becomes a one-line :class:`~promptbias.errors.UserError` ("no space left on device … free space and
rerun"); the previous version of the target is left untouched.

Fault injection (for tests/reliability only; unset in normal use): ``PROMPTBIAS_FAULT=<substring>:<action>[:<n>]``
makes the ``n``-th (default 1st) ``atomic_path`` write in this process whose target path contains
``substring`` fail right before ``os.replace`` — after the temporary file is complete and synced.
Actions: ``kill`` (SIGKILL this process), ``term`` (SIGTERM to this process, then carry on),
``enospc`` (raise ``OSError(ENOSPC)``, as a full disk would), ``hold`` (write this process's pid to the
file named by ``PROMPTBIAS_FAULT_MARK`` and wait there until a signal ends it — SIGTERM included — so a
test interrupts a job that is provably mid-way, whatever the machine's load; once the mark exists, later
processes pass the point: a restarted job runs on). Long loops also pass named points through
the same hook (:func:`fault_point`, e.g. training's ``<run dir>/epoch3-step2``), so a test can interrupt
a job at an exact step instead of racing it with a timer.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import math
import os
import platform
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from promptbias.errors import UserError

FAULT_ENV = "PROMPTBIAS_FAULT"
FAULT_MARK_ENV = "PROMPTBIAS_FAULT_MARK"
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_fault_hits = 0  # matching atomic_path writes seen in this process (for the n-th write)


def _inject_fault(target: Path) -> None:
    """The ``PROMPTBIAS_FAULT`` test hook (see the module docstring); a no-op when the variable is unset."""
    global _fault_hits
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    parts = spec.split(":")
    nth = int(parts.pop()) if len(parts) > 2 and parts[-1].isdigit() else 1
    action = parts.pop()
    substring = ":".join(parts)
    if substring not in str(target):
        return
    _fault_hits += 1
    if _fault_hits != nth:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
    elif action == "hold":
        mark = Path(os.environ[FAULT_MARK_ENV])
        if mark.exists():
            return  # held once already (by an earlier attempt of this job): run on
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # training's handler would only set a flag
        mark.with_name(mark.name + ".tmp").write_text(f"{os.getpid()}\n")
        os.replace(mark.with_name(mark.name + ".tmp"), mark)  # the mark appears whole
        while True:  # until a signal ends the process
            signal.pause()
    else:
        raise ValueError(f"{FAULT_ENV}: unknown action {action!r} (kill | term | enospc | hold)")


def fault_point(label: str) -> None:
    """A named point where ``PROMPTBIAS_FAULT`` may kill or signal this process (tests only)."""
    if os.environ.get(FAULT_ENV):
        _inject_fault(Path(label))


def disk_full_error(target: str | os.PathLike) -> UserError:
    """The one-line error for a full disk while writing ``target``."""
    folder = Path(target).parent
    return UserError(
        f"{target}: no space left on device while writing it — free space on the file system of "
        f"{folder} (or point the output elsewhere) and rerun; earlier outputs are intact"
    )


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success fsync it and rename it onto ``target``."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=suffix if suffix is not None else ".tmp", dir=target.parent
        )
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise disk_full_error(target) from None
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get the usual permissions
    try:
        yield tmp
        if tmp.exists():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        _inject_fault(target)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            raise disk_full_error(target) from None
        raise


def remove_stale_temps(target: str | os.PathLike) -> None:
    """Delete temporaries that an ``atomic_path`` write of ``target`` left when its process was killed.

    Only for targets with a single writer (one job owns a run folder or a metrics file).
    """
    target = Path(target)
    if target.parent.is_dir():
        for stale in target.parent.glob(f".{glob.escape(target.name)}.*"):
            with contextlib.suppress(OSError):
                stale.unlink()


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_csv(target: str | os.PathLike, frame: Any) -> None:
    """A pandas DataFrame as CSV without its index, written atomically."""
    with atomic_path(target, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)


def write_json(target: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Strict JSON (RFC 8259): a NaN or infinite number is written as ``null`` — what DVC, jq and every
    other JSON reader accept — never as Python's ``NaN`` literal."""
    text = json.dumps(_finite(obj), indent=indent, sort_keys=False, default=_json_default, allow_nan=False)
    write_text(target, text + "\n")


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (containers rebuilt, other values kept)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return _finite(obj.tolist())
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):  # (arrays and numpy/torch scalars were turned into lists by _finite)
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


GIT_CHANGED_MAX = 20  # the changed tracked files a record lists (git_changed_count says how many there are)


def _git(args: list[str], cwd: str | os.PathLike | None) -> str | None:
    """``git <args>`` stdout, or None outside git / when git fails (no index lock taken: a record never
    blocks a concurrent ``git commit``)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False, env=env
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_sha(cwd: str | os.PathLike | None = None) -> str | None:
    """The current commit of the working tree, or None outside git."""
    out = _git(["rev-parse", "HEAD"], cwd)
    return (out or "").strip() or None


def git_changes(cwd: str | os.PathLike | None = None) -> list[str] | None:
    """The tracked files whose working-tree or staged content differs from HEAD (sorted), or None
    outside git. Untracked and ignored files (DVC outputs, data) do not count."""
    out = _git(["status", "--porcelain=v1", "-z", "--untracked-files=no"], cwd)
    if out is None:
        return None
    entries, changed = out.split("\0"), []
    i = 0
    while i < len(entries):
        entry = entries[i]
        if len(entry) > 3:
            changed.append(entry[3:])
            if entry[0] in "RC":  # a rename/copy: the next entry is the source path
                changed.append(entries[i + 1])
                i += 1
        i += 1
    return sorted(set(changed))


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide numerical results."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("promptbias", "torch", "open_clip_torch", "numpy", "pillow"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def provenance() -> dict[str, Any]:
    """A snapshot saved next to every output: when, where, which code.

    ``git_sha`` is HEAD; ``git_dirty`` says whether tracked files differ from it (an uncommitted params
    edit, say), ``git_changed`` names the first :data:`GIT_CHANGED_MAX` of them and ``git_changed_count``
    how many there are (all three None outside git).
    """
    sha, changed = git_sha(), git_changes()
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "git_sha": sha,
        "git_dirty": None if changed is None or sha is None else bool(changed),
        "git_changed": None if changed is None or sha is None else changed[:GIT_CHANGED_MAX],
        "git_changed_count": None if changed is None or sha is None else len(changed),
        "versions": package_versions(),
    }
