"""What the stand-alone benchmark scripts share (``python -m benchmarks.<name>``, outside
``conveyor-hf bench``): a command line described by the script's first docstring line and
ending with ``--json PATH``, figures reported as a median with its min–max spread, and the
JSON file of figures they write.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any, Sequence

__all__ = ["add_json_option", "script_parser", "spread", "write_json"]


def script_parser(doc: str | None, **kwargs: Any) -> argparse.ArgumentParser:
    """An argument parser described by the first line of the script's docstring ``doc``."""
    return argparse.ArgumentParser(description=(doc or "").split("\n")[0], **kwargs)


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """``--json PATH``: where :func:`write_json` puts the figures (add it last, as every script does)."""
    parser.add_argument("--json", default=None, help="write the figures here")


def spread(values: Sequence[float]) -> dict[str, float]:
    """``{"median", "min", "max"}`` of ``values``; ``{}`` when there are none."""
    if not values:
        return {}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def write_json(path: str | None, figures: Any, *, indent: int) -> None:
    """Write ``figures`` as JSON to ``path`` (the ``--json`` option); nothing when it is None."""
    if path:
        with open(path, "w") as fh:
            json.dump(figures, fh, indent=indent)
