"""A warm process for the pipeline's jobs: import torch once, fork a child per command.

    snakemake …                                  # local runs start one server (Snakefile onstart), jobs use it
    promptbias warm -- dvc repro                 # any other engine: a server for the commands it starts
    PROMPTBIAS_WARM=off snakemake …              # every job cold

Importing torch, open_clip and the stages costs a demo job seconds before its first useful step; the
sweep runs hundreds of jobs. The server imports all of it once, then forks a child per command: the
child takes the job's stdin/stdout/stderr (passed over the Unix socket), working directory, environment
and argv, resets the RNGs and signal dispositions a fresh interpreter would have, and runs
``promptbias.cli.main`` — the same code path, outputs, logs and records as a cold run (a test compares
the bytes). The job's own process stays the one its engine sees: it forwards signals to the child,
waits, and exits with the child's status (re-raising the signal that ended it).

Safety rules: the server never initialises CUDA or runs a tensor op before forking (children do their
own device set-up); a child that crashes takes only its job down; a client that dies has its child
killed; a server whose code differs from the job's (promptbias sources, interpreter, plugins) answers
"stale" and the job runs cold; no server (or ``PROMPTBIAS_WARM`` unset/``off``) means cold. The server
exits when its owner process is gone and no child runs, or on SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from promptbias.joblock import JOB_PID_ENV  # the client's pid, in its child's environment

ENV = "PROMPTBIAS_WARM"
# commands worth a warm start (the others are light or spawn engines themselves)
WARM_COMMANDS = frozenset(
    {"fetch", "split", "cache", "pretrain-demo", "train", "evaluate", "aggregate", "probe", "render"}
)
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_HEADER = struct.Struct("!I")  # the request's JSON length, sent with the three stdio descriptors
_in_child = False  # set in a forked child: its own main() must not hand the job on again
GATE_ENV = "PROMPTBIAS_WARM_GATE"  # tests only: a child waits at its start for <path>.go (see _gate)


# ------------------------------------------------------------------------------------------ client
def delegate(argv: list[str]) -> None:
    """Run ``promptbias argv`` in the warm server and exit with its status; return to run it cold."""
    path = os.environ.get(ENV, "")
    if _in_child or not path or path == "off" or _command(argv) not in WARM_COMMANDS:
        return
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
    except OSError:
        return  # no server (not started yet, gone, or on another node): run cold
    # a signal that arrives before the forwarders are in place waits (pending) instead of being lost
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    try:
        reader = _hand_over(conn, argv)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a pending one is forwarded (or handled) here
    with conn:
        if reader is None:
            return  # not taken (a stale server, or one that went away): run cold
        try:
            done = json.loads(reader.readline() or "{}")
        except (OSError, ValueError):
            done = {}
    _end_like(done)


def _hand_over(conn: socket.socket, argv: list[str]) -> Any:
    """Send the job; the reply reader once the child runs and the forwarders are installed, else None."""
    request = json.dumps(
        {
            "argv": argv,
            "cwd": os.getcwd(),
            "env": {**os.environ, JOB_PID_ENV: str(os.getpid())},
            "fingerprint": fingerprint(),
            "sigint_ignored": signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
        }
    ).encode()
    try:
        socket.send_fds(conn, [_HEADER.pack(len(request))], [0, 1, 2])
        conn.sendall(request)
        reader = conn.makefile("r")
        reply = json.loads(reader.readline() or "{}")
    except (OSError, ValueError):
        return None  # the server went away before taking the job: nothing ran
    if "pid" not in reply:
        return None  # stale server: run cold
    child = int(reply["pid"])
    for sig in FORWARDED:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, lambda signum, _frame: _kill(child, signum))
    return reader


def _end_like(done: dict[str, Any]) -> None:
    """Exit as the child ended, so the engine sees the same."""
    if "signal" in done:
        signum = int(done["signal"])
        if signum not in (signal.SIGKILL, signal.SIGSTOP):  # (those two have no handler to reset)
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # end the way the child ended, so the engine sees the same
        sys.exit(128 + signum)
    if "exit" not in done:
        print("error: the warm promptbias server stopped during this job — run it again", file=sys.stderr)
        sys.exit(1)
    sys.exit(int(done["exit"]))


def _command(argv: list[str]) -> str | None:
    """The subcommand of a ``promptbias`` argv (global options and their values skipped)."""
    takes_value = {"--params", "--set"}
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in takes_value:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def fingerprint() -> dict[str, str]:
    """What must match between a job and the server for the child to run the job's code."""
    from promptbias.identity import code

    return {
        "executable": sys.executable,
        "sources": code()["sources"],
        "plugins": os.environ.get("PROMPTBIAS_PLUGINS", ""),
        "package": str(Path(__file__).resolve().parent),
    }


# ------------------------------------------------------------------------------------------ server
def preload() -> None:
    """Import what every stage imports (no CUDA, no tensor op: children must start from a clean state)."""
    import numpy  # noqa: F401
    import open_clip  # noqa: F401
    import pandas  # noqa: F401
    import PIL.Image  # noqa: F401
    import torch  # noqa: F401

    import promptbias.cli
    import promptbias.evaluate
    import promptbias.probes.commands
    import promptbias.train  # noqa: F401


def serve(path: str, owner: int) -> None:
    """Accept jobs on ``path`` until the owner is gone (and no child runs) or SIGTERM arrives."""
    stopping = False

    def stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the jobs through their clients
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = f"{path}.{os.getpid()}"
    listener.bind(staging)  # listening before the imports: early jobs wait for them instead of importing
    listener.listen(64)
    os.replace(staging, path)  # the path appears only once connections are accepted
    children: dict[int, socket.socket] = {}
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    try:
        preload()  # (an import error ends the server: waiting jobs then run cold)
        expected = fingerprint()
        _log(f"ready (pid {os.getpid()}, owner {owner})")
        while not (stopping and not children) and (children or _alive(owner)):
            for key, _ in sel.select(timeout=0.2):
                if key.fileobj is listener:
                    conn, _ = listener.accept()
                    pid = _start(conn, expected, listener, sel, children)
                    if pid is not None:
                        children[pid] = conn
                        sel.register(conn, selectors.EVENT_READ, pid)
                else:  # a client's connection closed: its job is gone, so is the child
                    _kill(key.data, signal.SIGKILL)
                    sel.unregister(key.fileobj)
            _reap(children, sel)
            if stopping:
                for pid in children:
                    _kill(pid, signal.SIGTERM)
    finally:
        listener.close()
        Path(path).unlink(missing_ok=True)
        _log("stopped")


def _start(
    conn: socket.socket,
    expected: dict[str, str],
    listener: socket.socket,
    sel: selectors.BaseSelector,
    children: dict[int, socket.socket],
) -> int | None:
    """Read one request and fork its child; None (connection closed) when it cannot run here."""
    try:
        head, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
        (size,) = _HEADER.unpack(head)
        body = b""
        while len(body) < size:
            chunk = conn.recv(size - len(body))
            if not chunk:
                raise OSError("short request")
            body += chunk
        request = json.loads(body)
    except (OSError, ValueError, struct.error):
        conn.close()
        return None
    if request.get("fingerprint") != expected or len(fds) != 3:
        theirs = request.get("fingerprint") or {}
        differ = sorted(k for k in expected if theirs.get(k) != expected[k])
        _log(f"stale ({', '.join(differ)} differ) for {request.get('argv')}: the job runs cold")
        for fd in fds:
            os.close(fd)
        conn.sendall(b'{"stale": true}\n')
        conn.close()
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    # the child starts with the server's handlers (SIGINT ignored, SIGTERM = stop the server): a signal
    # forwarded to it before _run_child resets them would be lost, so they stay blocked (pending) till then
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    pid = os.fork()
    if pid != 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    if pid == 0:  # the child: never returns
        listener.close()
        sel.close()
        for other in children.values():
            other.close()
        conn.close()
        _run_child(request, fds)
    for fd in fds:
        os.close(fd)
    _log(f"pid {pid}: promptbias {' '.join(request['argv'])}")
    try:
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    except OSError:
        _kill(pid, signal.SIGKILL)  # the client is gone already
    return pid


def _run_child(request: dict[str, Any], fds: list[int]) -> None:
    """Become the job: its stdio, directory, environment and a fresh interpreter's state; run the CLI."""
    global _in_child
    _in_child = True
    code = 1
    try:
        _die_with_server()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        _fresh_stdio()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        sigint = signal.SIG_IGN if request["sigint_ignored"] else signal.default_int_handler
        signal.signal(signal.SIGINT, sigint)
        _fresh_rngs()
        sys.argv = ["promptbias", *request["argv"]]
        from promptbias.cli import main

        _gate(request["env"].get(GATE_ENV))
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)  # a signal sent meanwhile lands here
            main(request["argv"])
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc.code)
        except KeyboardInterrupt:
            sys.stderr.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)  # as an interpreter ends on an unhandled Ctrl-C
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


def _gate(path: str | None) -> None:
    """Tests only (``PROMPTBIAS_WARM_GATE``): write this child's pid to ``path`` and wait for ``path.go``,
    with the job's signals still blocked, so a test can signal the job in the window between the fork and
    the child's own handlers — whatever the machine's load — and check the signal is not lost."""
    if not path:
        return
    gate = Path(path)
    gate.with_name(gate.name + ".tmp").write_text(f"{os.getpid()}\n")
    os.replace(gate.with_name(gate.name + ".tmp"), gate)
    go = gate.with_name(gate.name + ".go")
    while not go.exists():
        time.sleep(0.01)  # (a barrier on a file the test creates, not a timer)


def _die_with_server() -> None:
    """Linux: the kernel kills this child if the server dies (its client then reports the job failed, and
    no orphan goes on writing the job's outputs behind the engine's back)."""
    import ctypes

    server = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != server:  # the server died before the request took effect
        os._exit(1)


def _exit_code(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    print(value, file=sys.stderr)  # sys.exit("message") prints it and exits 1
    return 1


def _fresh_stdio() -> None:
    """Text streams on the new descriptors, buffered as a fresh interpreter buffers them."""
    import io

    def stream(fd: int, mode: str, line_buffering: bool, errors: str) -> io.TextIOWrapper:
        raw = io.FileIO(fd, mode, closefd=False)
        buffered = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
        return io.TextIOWrapper(buffered, encoding="utf-8", errors=errors, line_buffering=line_buffering)

    sys.stdin = stream(0, "r", False, "strict")
    sys.stdout = stream(1, "w", os.isatty(1), "strict")
    sys.stderr = stream(2, "w", True, "backslashreplace")


def _fresh_rngs() -> None:
    """The random state a fresh process starts with (torch: its fixed default seed; random: the OS)."""
    import random

    import numpy as np
    import torch

    random.seed()
    np.random.seed()
    torch.manual_seed(torch.initial_seed())


def _reap(children: dict[int, socket.socket], sel: selectors.BaseSelector) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        message = {"signal": -code} if code < 0 else {"exit": code}
        with contextlib.suppress(KeyError, ValueError):  # already unregistered if its client had gone
            sel.unregister(conn)
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(message).encode() + b"\n")
        conn.close()


def _kill(pid: int, signum: int) -> None:
    """Send a signal to a job's child (forwarded from its client, or because the client is gone)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} promptbias-warm: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------- start and stop
def start(owner: int, log: Path | None = None, timeout: float = 120.0) -> tuple[str, subprocess.Popen]:
    """Start a server owned by ``owner`` and wait until its socket is bound; (socket path, process)."""
    path = os.path.join(
        tempfile.gettempdir(), f"promptbias-warm-{os.getuid()}-{owner}-{os.urandom(4).hex()}.sock"
    )
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "promptbias.warm", "serve", "--socket", path, "--owner", str(owner)],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=out,
        start_new_session=True,  # a Ctrl-C to the engine's terminal reaches the jobs, not the server
    )
    if log is not None:
        out.close()
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the warm server did not start (see {log or 'its log'})")
        time.sleep(0.05)
    return path, proc


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Ask the server to finish (it waits for running children) and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------------- the engines' side
_engine_server: subprocess.Popen | None = None


def start_for_snakemake(workflow: Any) -> None:
    """The Snakefile's ``onstart``: one server for this run's local jobs, through ``PROMPTBIAS_WARM``.

    Nothing when jobs run elsewhere (a cluster executor: a Unix socket is node-local and a job must run
    inside its allocation), when ``PROMPTBIAS_WARM=off``, or when a server is already given.
    """
    global _engine_server
    settings = getattr(getattr(workflow, "executor_plugin", None), "common_settings", None)
    if os.environ.get(ENV) or settings is None or not settings.local_exec:
        return
    log = Path(".snakemake/log/promptbias-warm.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    path, _engine_server = start(owner=os.getpid(), log=log)
    os.environ[ENV] = path


def stop_for_snakemake() -> None:
    """The Snakefile's ``onsuccess``/``onerror``."""
    global _engine_server
    if _engine_server is not None:
        stop(_engine_server)
        _engine_server = None
        os.environ.pop(ENV, None)


@click.command("warm", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def warm_command(command: tuple[str, ...]) -> None:
    """Run COMMAND with a warm server: the promptbias jobs it starts skip the torch import.

    Example: promptbias warm -- dvc repro   (Snakemake starts its own for local runs)
    """
    if os.environ.get(ENV):  # one given already (or off): nothing to add
        os.execvp(command[0], list(command))
    path, proc = start(owner=os.getpid())
    try:
        code = subprocess.call(list(command), env={**os.environ, ENV: path})
    except OSError as exc:
        from promptbias.errors import UserError

        raise UserError(f"warm: cannot run {command[0]!r} ({exc.strerror}) — check the command") from None
    finally:
        stop(proc)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="promptbias-warm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("serve", help="accept jobs on a Unix socket")
    run.add_argument("--socket", required=True)
    run.add_argument("--owner", type=int, required=True, help="exit once this process is gone")
    args = parser.parse_args(argv)
    serve(args.socket, args.owner)


if __name__ == "__main__":  # run as the module promptbias.warm, not as __main__: one set of globals
    from promptbias import warm

    warm.main()
