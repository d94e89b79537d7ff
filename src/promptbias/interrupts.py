"""A Ctrl-C that ends a job at once, even while it runs inside a long torch call.

    from promptbias.interrupts import interruptible

    with interruptible():          # around a loop whose outputs are written atomically afterwards
        for step in range(steps):
            loss.backward()        # one C++ call: Python runs no signal handler until it returns

Python raises ``KeyboardInterrupt`` only between two bytecodes of the main thread, so a SIGINT that
arrives during ``loss.backward()`` or a fused optimiser step waits until the call returns — seconds
per step on a loaded machine (pretrain-demo's steps took 4–56 s at load 15, and a Ctrl-C seemed
ignored). Inside ``interruptible()`` the C-level signal handler wakes a watcher thread through
:func:`signal.set_wakeup_fd`; the thread flushes the output streams, prints ``aborted`` (what an
interrupted command prints) and ends the process with exit code 130. Only for code that has nothing
to clean up: every output is written through ``promptbias.io.atomic_path``, and a temporary left by
the exit is removed by the job's next run (``bind_job``). Outside the main thread, with SIGINT ignored
(a background job) or with a handler of the caller's own, it changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

EXIT_CODE = 130  # 128 + SIGINT, as the CLI exits on an interrupt


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT ends the process (``aborted``, exit 130) at once inside this block; see the module doc."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    signal.signal(signal.SIGINT, lambda _signum, _frame: None)  # the watcher ends the process
    watcher = threading.Thread(target=_watch, args=(read_fd,), name="promptbias-interrupt", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(write_fd)  # the watcher reads end-of-file and returns
        watcher.join()
        os.close(read_fd)


def _watch(read_fd: int) -> None:
    while True:
        data = os.read(read_fd, 64)
        if not data:
            return  # the block ended
        if signal.SIGINT in data:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            with contextlib.suppress(OSError):
                os.write(2, b"aborted\n")
            os._exit(EXIT_CODE)
