"""A dependency-free progress bar for long CLI loops (bench, layers, train).

On a terminal it redraws one line in place: `[#######.........]  7/33  0:21 < 0:48  label`.
Elsewhere (CI logs, pipes) it prints one plain line per step, so logs stay readable.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 60}:{seconds % 60:02d}'


class ProgressBar:

  def __init__(self, total: int, stream: TextIO | None = None, width: int = 24,
               interactive: bool | None = None, initial: int = 0):
    self.total = max(total, 0)
    self.done = self.initial = initial
    self._running = 1  # step() announces a step that has not finished yet
    self.stream = stream or sys.stderr
    self.width = width
    self.interactive = self.stream.isatty() if interactive is None else interactive
    self.start = time.perf_counter()
    self._drawn = False

  def step(self, label: str) -> None:
    """Announces the step about to run (so a slow step shows what it is)."""
    self.done += 1
    self._draw(label)

  def update(self, done: int, label: str) -> None:
    """Sets the count of finished steps (e.g. training steps, drawn every log interval)."""
    self.done = done
    self._running = 0
    self._draw(label)

  def note(self, message: str) -> None:
    """A message that is not a step (e.g. a calibration before the loop)."""
    if self.interactive and self._drawn:
      self.stream.write('\r\033[K')
    self.stream.write(message + '\n')
    self.stream.flush()
    self._drawn = False

  def line(self, label: str) -> str:
    elapsed = time.perf_counter() - self.start
    frac = min(self.done / self.total, 1.0) if self.total else 1.0
    filled = int(round(frac * self.width))
    bar = '#' * filled + '.' * (self.width - filled)
    finished = max(self.done - self._running, 0)  # steps completed
    ran = finished - self.initial  # ... in this process (a resumed run starts part way)
    eta = f' < {_clock(elapsed / ran * (self.total - finished))}' if ran > 0 else ''
    n = len(str(self.total))
    return f'[{bar}] {self.done:>{n}}/{self.total} {_clock(elapsed)}{eta}  {label}'

  def _draw(self, label: str) -> None:
    text = self.line(label)
    if self.interactive:
      columns = shutil.get_terminal_size((100, 20)).columns
      self.stream.write('\r\033[K' + text[:columns - 1])
      self._drawn = True
    else:
      self.stream.write(text + '\n')
    self.stream.flush()

  def close(self) -> None:
    if self.interactive and self._drawn:
      self.stream.write('\n')
      self.stream.flush()
    self._drawn = False
