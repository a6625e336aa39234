"""Where conveyor_hf keeps what it builds once and reuses: converted models, search indexes.

One folder for all of it, so one setting moves (or clears) every cache:
``$CONVEYOR_HF_CACHE`` if set, else ``$XDG_CACHE_HOME/conveyor_hf`` (the XDG base-directory
convention), else ``~/.cache/conveyor_hf``. Each user of the cache takes a subfolder of its
own (``models/``, ``search/``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """The conveyor_hf cache folder (``~`` expanded; not created here, callers create what they write)."""
    root = os.environ.get("CONVEYOR_HF_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "conveyor_hf"
