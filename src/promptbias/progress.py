"""Progress of long loops: a tqdm bar on a terminal, plain periodic lines in a log file.

    from promptbias.progress import progress_bar, track

    for batch in track(batches, desc="dtd/prompt/seed1 test", unit="batch"):  # total: len(batches)
        ...
    with progress_bar(total=size, desc="images.tar", unit="B", unit_scale=True) as bar:
        for chunk in stream:
            bar.update(len(chunk))

Both write to stdout (stderr carries only a failing command's ``error:`` line). When stdout is a terminal
(a command run by hand, ``dvc repro``) it is tqdm's bar, erased when the loop ends. Otherwise (a Snakemake
job's log file, a pipe) it is :class:`LineProgress`: tqdm's own meter text (``format_meter`` without the
bar) written as whole lines — at most one every ``interval`` seconds (:data:`LOG_INTERVAL`; the environment
variable ``PROMPTBIAS_PROGRESS_INTERVAL`` overrides it), then one final line with the count, the overall
rate and the elapsed time — with no carriage return and no ANSI escape. ``enabled=False`` or
``PROMPTBIAS_PROGRESS=0`` turns both off.

Progress only observes: it draws no random number, and neither reorders nor buffers the iterable, so a
command's outputs are byte-identical with and without it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

from promptbias.errors import UserError

LOG_INTERVAL = 30.0  # seconds between two lines in a log file
_OFF = ("0", "off", "false", "no")


class LineProgress(tqdm):
    """tqdm writing its meter as newline-terminated lines: one per ``interval`` seconds at most, and a
    final one (overall rate, as tqdm's ``leave=True`` line) when closed."""

    monitor_interval = 0  # no monitor thread: lines are written from the loop itself

    def __init__(self, *args: Any, interval: float = LOG_INTERVAL, **kwargs: Any) -> None:
        self._interval = float(interval)
        self._last_line: float | None = None
        # ncols=0: format_meter leaves the bar out; miniters=1 with mininterval: one clock read per step
        kwargs.update(
            ncols=0, dynamic_ncols=False, ascii=True, mininterval=self._interval, miniters=1, leave=False
        )
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is not None:  # tqdm erasing its bar (close, leave=False): a log keeps what it has
            return False
        now = self._time()
        if self._last_line is None:  # tqdm's first display, at 0: the clock starts here
            self._last_line = now
            return True
        if now - self._last_line < self._interval:  # e.g. a set_postfix refresh between two lines
            return True
        self._last_line = now
        self._write(str(self))
        return True

    def close(self) -> None:
        if getattr(self, "disable", True):
            return
        if hasattr(self, "start_t"):  # fully constructed
            self._ema_dt = lambda: None  # the final line states the overall rate, not the recent one
            self._write(str(self))
        super().close()

    def _write(self, line: str) -> None:
        self.fp.write(line + "\n")
        getattr(self.fp, "flush", lambda: None)()


def progress_bar(
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    *,
    initial: float = 0,
    unit_scale: bool = False,
    enabled: bool = True,
    interval: float | None = None,
    file: IO[str] | None = None,
    iterable: Iterable[Any] | None = None,
) -> tqdm:
    """A tqdm for ``update(n)``: a bar when ``file`` (default: stdout) is a terminal, else
    :class:`LineProgress` lines every ``interval`` seconds (default: :func:`log_interval`)."""
    stream = file if file is not None else sys.stdout
    kwargs: dict[str, Any] = dict(
        iterable=iterable,
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        unit_scale=unit_scale,
        file=stream,
    )
    if not enabled or os.environ.get("PROMPTBIAS_PROGRESS", "1").strip().lower() in _OFF:
        return tqdm(disable=True, **kwargs)
    if _isatty(stream):
        return tqdm(leave=False, dynamic_ncols=True, **kwargs)
    return LineProgress(interval=log_interval() if interval is None else interval, **kwargs)


def track(
    iterable: Iterable[Any],
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    **kwargs: Any,
) -> tqdm:
    """``iterable`` with progress (see :func:`progress_bar` for the keywords); ``total`` defaults to its
    ``len()``. The items, and their order, are the iterable's own."""
    return progress_bar(total, desc, unit, iterable=iterable, **kwargs)


def log_interval() -> float:
    """Seconds between two progress lines in a log: ``PROMPTBIAS_PROGRESS_INTERVAL`` or LOG_INTERVAL."""
    raw = os.environ.get("PROMPTBIAS_PROGRESS_INTERVAL")
    if raw is None or not raw.strip():
        return LOG_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise UserError(f"PROMPTBIAS_PROGRESS_INTERVAL={raw!r}: not a number of seconds ≥ 0 — e.g. 30")
    return value


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False
