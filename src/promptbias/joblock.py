"""One writer per job, one engine at a time per workspace: flock-based locks taken when a job starts.

    from promptbias.joblock import claim, release_all

    claim("train-dtd-prompt-s1")   # in bind_job, before the job writes or deletes anything
    ...                            # the job runs; the locks live as long as the process (SIGKILL frees them)
    release_all()                  # cli.main, when the command ends (the next claim in a process also does)

Two locks, both ``fcntl.flock`` on files in a folder of the workspace (the job's working directory) under the
temp directory, ``$TMPDIR/promptbias-locks-<uid>/<digest of the workspace's real path>/`` — outside the
workspace, so a refused job changes nothing in it:

* **the job lock** ``job-<name>.lock`` (exclusive): a second process running the same job — the same
  command started twice, or the same job by two engines — finds it held and refuses;
* **the engine lock** ``engine-<key>.lock`` (shared by every job of one engine run): a job whose engine
  differs from the one whose jobs are running now refuses, even for other outputs — Snakemake's and DVC's
  views of what is up to date would each be wrong about the other's writes. Taking it is serialised by
  ``engines.lock``, so two engines starting at once cannot both get in.

"The engine" of a job is the outermost ancestor process that is ``dvc`` or ``snakemake`` (Linux: the
parent chain in ``/proc``; a warm job starts the walk at its client, ``PROMPTBIAS_JOB_PID``); a job run by
hand, or on a cluster node (no engine ancestor), belongs to the engine "commands" of this workspace, which
its peers share. A refusal is one line naming the other process (pid, its engine and command) and exits 2
(:class:`~promptbias.errors.UserError`) before the job writes or deletes anything.

What a lock inside a job cannot prevent: an engine deletes a job's declared outputs *before* it starts
the job's command (DVC removes a stage's outs, Snakemake removes existing outputs of a job it reruns and
those of a job that failed), so the second engine's first job is refused but that engine may already have
removed files the first one wrote. Run one engine at a time per workspace (``promptbias run`` drives both
in turn); a refusal means: stop the second engine, let the first finish, then rerun.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shlex
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from promptbias.errors import UserError

JOB_PID_ENV = "PROMPTBIAS_JOB_PID"  # set by a warm client: the process its engine started
_ENGINES = ("snakemake", "dvc")
_held: list[int] = []  # descriptors of the locks this process holds


@dataclass(frozen=True)
class Engine:
    """The process that runs a job: an engine ancestor, or ``commands`` (run by hand)."""

    kind: str  # "snakemake" | "dvc" | "commands"
    pid: int | None  # the engine's pid (None for commands)
    command: str  # its command line, shortened

    @property
    def key(self) -> str:
        return self.kind if self.pid is None else f"{self.kind}-{self.pid}"

    def describe(self) -> str:
        if self.pid is None:
            return "a promptbias command run by hand"
        return f"{self.kind} pid {self.pid} ({self.command})"


def claim(job: str, root: str | os.PathLike = ".") -> None:
    """Take ``job``'s lock and its engine's share of the workspace; refuse (exit 2) if another holds one.

    A process runs one job at a time: the locks of a job this process ran before (a command called
    in-process, as tests and click's CliRunner do, without :func:`release_all`) are dropped first."""
    release_all()
    folder = _lock_dir(Path(root))
    me = _job_pid()
    engine = engine_of(me)
    with _locked(folder / "engines.lock", fcntl.LOCK_EX):
        _check_engines(folder, engine, job)
        _held.append(_share(folder / f"engine-{_safe(engine.key)}.lock", _note(me, engine)))
    fd = _try(folder / f"job-{_safe(job)}.lock", fcntl.LOCK_EX)
    if fd is None:
        holder = _read(folder / f"job-{_safe(job)}.lock")
        raise UserError(
            f"{job}: its outputs are being written by {holder or 'another process'} — wait for that job to "
            "end (or stop it), then rerun; one engine at a time per workspace"
        )
    _write_note(fd, _note(me, engine))
    _held.append(fd)


def release_all() -> None:
    """Drop every lock this process holds (the end of a command run in-process)."""
    while _held:
        with contextlib.suppress(OSError):
            os.close(_held.pop())


def engine_of(pid: int) -> Engine:
    """The outermost ``dvc``/``snakemake`` ancestor of ``pid`` (``pid`` itself included), else commands.

    Outermost: an engine that runs a job through a second process of its own (Snakemake spawning
    ``python -m snakemake`` for a script job) is still one engine.
    """
    seen: set[int] = set()
    found = Engine("commands", None, "")
    while pid > 1 and pid not in seen:
        seen.add(pid)
        argv = _cmdline(pid)
        kind = _engine_kind(argv)
        if kind is not None:
            found = Engine(kind, pid, _short(argv))
        parent = _ppid(pid)
        if parent is None:
            break
        pid = parent
    return found


# ------------------------------------------------------------------------------------------ internals
def _check_engines(folder: Path, engine: Engine, job: str) -> None:
    """Under ``engines.lock``: refuse when a job of another engine holds its engine lock; drop stale ones."""
    mine = f"engine-{_safe(engine.key)}.lock"
    for other in sorted(folder.glob("engine-*.lock")):
        if other.name == mine:
            continue
        fd = _try(other, fcntl.LOCK_EX)
        if fd is not None:  # nobody holds it: that engine's jobs are over (or were killed)
            with contextlib.suppress(OSError):
                other.unlink()
            os.close(fd)
            continue
        holder = _read(other)
        raise UserError(
            f"{job}: another engine is running jobs in this workspace — {holder or other.name}; "
            f"this job runs under {engine.describe()} — one engine at a time per workspace: let it finish "
            "(or stop it), then rerun"
        )


def _lock_dir(root: Path) -> Path:
    """This workspace's lock folder: outside the workspace (nothing in it changes, no engine or git sees it),
    on the local temp file system (flock there is reliable), named by the workspace's real path."""
    real = os.path.realpath(root)
    digest = hashlib.sha256(real.encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"promptbias-locks-{os.getuid()}" / digest
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "workspace").write_text(real + "\n")  # (for a person looking at the folder)
    except OSError as exc:
        raise UserError(
            f"{folder}: cannot create the job locks ({exc.strerror}) — make it writable"
        ) from None
    return folder


def _share(path: Path, note: str) -> int:
    """A shared lock on an engine file (no exclusive holder can exist: we hold ``engines.lock``); the file
    states the engine and its latest job — the line a refused job of another engine quotes."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _write_note(fd, note)
    return fd


def _try(path: Path, mode: int) -> int | None:
    """The descriptor of ``path`` locked with ``mode`` (non-blocking), or None when another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


@contextlib.contextmanager
def _locked(path: Path, mode: int) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


def _note(pid: int, engine: Engine) -> str:
    command = _short(_cmdline(pid)) or "promptbias"
    where = "" if engine.pid is None else f" under {engine.describe()}"
    return f"pid {pid} ({command}){where}"


def _write_note(fd: int, note: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (note + "\n").encode(), 0)


def _read(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text().strip().splitlines()[0]
    return ""


def _job_pid() -> int:
    raw = os.environ.get(JOB_PID_ENV, "")
    return int(raw) if raw.isdigit() else os.getpid()


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # (the command name may hold spaces and parentheses)
    return int(fields[1]) if len(fields) > 1 else None


def _engine_kind(argv: list[str]) -> str | None:
    """``snakemake``/``dvc`` when ``argv`` runs that program (directly, as a script or ``-m``) as an engine.

    A Snakemake started with ``--target-jobs`` is one job's step, spawned by an executor (each SLURM job
    runs its rule that way): not an engine — its jobs belong to the engine above it, or on a cluster node
    to "commands", which every job step there shares (two SLURM jobs on one node are one engine)."""
    for i, arg in enumerate(argv[:3]):
        name = os.path.basename(arg)
        if arg == "-m" and i + 1 < len(argv):
            name = argv[i + 1]
        elif name not in _ENGINES:
            continue
        if name == "snakemake" and "--target-jobs" in argv:
            return None
        if name in _ENGINES:
            return name
    return None


def _short(argv: list[str], limit: int = 80) -> str:
    text = shlex.join([os.path.basename(argv[0]), *argv[1:]]) if argv else ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
