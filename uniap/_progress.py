"""Progress on standard error: a tqdm bar on a terminal, a few plain lines in a log.

A tqdm bar redraws itself with carriage returns many times a second; written to a file or a
pipe (a batch job's log, CI) that is thousands of fragments in one line.  When the stream is
not a terminal, :func:`progress_bar` prints a complete line at most every ``interval``
seconds, and one at the end.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def progress_bar(total: int | None, desc: str, unit: str = "image", initial: int = 0,
                 file: TextIO | None = None, interval: float = 30.0, disable: bool = False) -> Any:
    """A progress bar with ``update(n)``, ``set_postfix(**values)`` and ``close()``.

    Parameters
    ----------
    total : int or None
        Steps in all (None: not known).
    desc : str
        What is counted, printed first.
    unit : str
        The name of one step.
    initial : int
        Steps done already (a resumed run).
    file : text stream, optional
        Where to write (default: standard error).
    interval : float
        Seconds between two lines when ``file`` is not a terminal.
    disable : bool
        Show nothing (e.g. on every process of a distributed run but the first).

    Returns
    -------
    tqdm.tqdm or LogProgress
        tqdm on a terminal, else :class:`LogProgress` (silent when ``disable``).

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> bar = progress_bar(3, "uniap", file=out)
    >>> bar.update(3); bar.close()
    >>> out.getvalue().splitlines()[-1].startswith("uniap: 3/3 images (100%)")
    True
    """
    stream = sys.stderr if file is None else file
    if disable:
        return LogProgress(total, desc, unit, initial, stream, interval, silent=True)
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, unit=unit, desc=desc, file=stream)
    return LogProgress(total, desc, unit, initial, stream, interval)


class LogProgress:
    """Plain progress lines, at most one per ``interval`` seconds, and one at :meth:`close`.

    Parameters
    ----------
    total, desc, unit, initial, file, interval
        As :func:`progress_bar`.
    """

    def __init__(self, total: int | None, desc: str, unit: str, initial: int, file: TextIO,
                 interval: float, silent: bool = False) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.file, self.interval, self.silent = file, interval, silent
        self.start = self.last = time.monotonic()
        self.postfix = ""
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        if self.silent:
            return
        if self.total:
            units = self.unit + ("s" if self.total != 1 else "")
            done = f"{self.n}/{self.total} {units} ({100 * self.n // self.total}%)"
        else:
            done = f"{self.n} {self.unit}" + ("s" if self.n != 1 else "")
        text = f"{self.desc}: {done} in {now - self.start:.0f} s"
        if self.postfix:
            text += f", {self.postfix}"
        print(text, file=self.file, flush=True)
