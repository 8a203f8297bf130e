"""Where exported artifacts and the built-in model are kept between runs.

`$KERAS_TURBO_CACHE` if set, else `~/.cache/keras-turbo`. Entries are keyed by content hash,
so a changed model never reuses a stale export.
"""

from __future__ import annotations

import os
from pathlib import Path


def root(override: str | os.PathLike | None = None) -> Path:
    """The cache directory (created on demand)."""
    if override is not None:
        base = Path(override)
    elif os.environ.get("KERAS_TURBO_CACHE"):
        base = Path(os.environ["KERAS_TURBO_CACHE"])
    else:
        base = Path.home() / ".cache" / "keras-turbo"
    base.mkdir(parents=True, exist_ok=True)
    return base
