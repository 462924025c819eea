"""File output that never leaves a half-written result behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def default_mode() -> int:
  """The permission bits a plain open() would give a new file (0o666 less the umask)."""
  mask = os.umask(0)
  os.umask(mask)
  return 0o666 & ~mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
  """Writes `text` to a temporary file beside `path`, then renames it over `path`."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, default_mode())
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
  return path


def save_figure(fig, path: str | os.PathLike, dpi: int = 90) -> Path:
  """Saves a matplotlib figure as PNG atomically (temporary file, then rename)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.png')
  os.close(fd)
  try:
    fig.savefig(tmp, dpi=dpi, bbox_inches='tight')
    os.chmod(tmp, default_mode())
    os.replace(tmp, path)
  finally:
    Path(tmp).unlink(missing_ok=True)
  return path


def pyplot():
  """matplotlib.pyplot on the file-only Agg backend."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt
