"""Progress reporting for the long phases of the recipes (decoding, level passes,
noise augmentation), readable both in a terminal and in a log file.

On a terminal it is a tqdm bar (writing mixtures, :func:`data_prep.common.execute`, uses it too).
When stderr is not a terminal (output redirected to a log), tqdm's carriage-return
updates would pile up on one line, so plain lines ``<phase>: <done>/<total> (<pct>%)``
are printed instead, at most every ``interval`` seconds, plus one when the phase ends.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")


class Progress:
    """Counts finished items of one phase of ``total`` items and reports them on stderr."""

    def __init__(self, total: int, desc: str, enabled: bool = True, interval: float = 10.0, unit: str = "file") -> None:
        self.total = total
        self.desc = desc
        self.done = 0
        self.enabled = enabled and total > 0
        self.interval = interval
        self._bar = None
        self._last = time.monotonic()
        if self.enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit)

    def update(self, count: int = 1) -> None:
        self.done += count
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(count)
            return
        now = time.monotonic()
        if now - self._last >= self.interval and self.done < self.total:
            self._last = now
            self._line()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            self._line()

    def _line(self) -> None:
        print(
            f"{self.desc}: {self.done}/{self.total} ({100 * self.done / self.total:.0f}%)", file=sys.stderr, flush=True
        )


def track(items: Iterable[Item], total: int, desc: str, enabled: bool = True, interval: float = 10.0) -> Iterator[Item]:
    """Yield ``items`` while reporting progress; ``total`` is their number."""
    progress = Progress(total, desc, enabled, interval)
    try:
        for item in items:
            yield item
            progress.update()
    finally:
        progress.close()
