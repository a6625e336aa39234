"""What a search backend is: the :class:`SearchBackend` protocol, the :class:`SearchHit` it
returns and the errors it raises.

:class:`~conveyor_hf.tools.search.SearchTool` talks to its backend only through these names,
and each backend (:mod:`~conveyor_hf.tools.search_live`, :mod:`~conveyor_hf.tools.search_offline`,
or your own) imports them from here, so the tool and its backends do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["SearchBackend", "SearchError", "SearchHit", "SearchUnavailable"]


@dataclass(frozen=True)
class SearchHit:
    """One search result. ``snippet`` is already cut to the backend's length limit."""

    title: str
    url: str = ""
    snippet: str = ""
    score: float | None = None


class SearchError(RuntimeError):
    """A query could not be answered; the message says why and what to do."""


class SearchUnavailable(SearchError):
    """The backend cannot be reached at all (no network, missing package or corpus)."""


@runtime_checkable
class SearchBackend(Protocol):
    """What :class:`~conveyor_hf.tools.search.SearchTool` needs from a backend: one method.

    ``search`` blocks, returns at most ``max_results`` hits (maybe none), raises
    :class:`SearchError` with an actionable message on failure, and may be called from
    several threads at once. Optional extras the tool uses when present:
    ``warm_up()``, ``describe() -> str``, ``close()``.
    """

    def search(self, query: str, max_results: int) -> list[SearchHit]: ...
