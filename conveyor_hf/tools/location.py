"""``LocationLookupTool``: the demo validated tool, a US city looked up in an encyclopedia.

Its ``location`` argument (``"City, ST"``) is checked by
:func:`~conveyor_hf.tools.us_states.check_us_location` the moment its closing quote is
written, so a bad place fails the call while the model is still writing it::

    LocationLookupTool().run('{"location": "Austin, TX"}').output   # 'Austin, TX — Austin, Texas: ...'
"""

from __future__ import annotations

import unicodedata
from typing import Any

from conveyor_hf.text import shorten
from conveyor_hf.tools.base import SideEffect
from conveyor_hf.tools.us_states import US_STATES, check_us_location, split_us_location
from conveyor_hf.tools.validated import ValidatedTool

__all__ = ["LocationLookupTool"]


def _norm(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return " ".join("".join(c for c in decomposed if c.isalnum() or c.isspace()).split())


class LocationLookupTool(ValidatedTool):
    """Looks up a US city in an encyclopedia and returns its summary.

    The ``location`` argument must be ``"City, ST"`` (a real US state or territory
    abbreviation); a bad one is rejected the moment its closing quote is written. The
    lookup uses :class:`~conveyor_hf.tools.search_offline.OfflineSearchBackend` (Wikipedia
    summaries, offline) unless another search backend is given.

    Args:
      backend: any object with ``search(query, max_results) -> list[SearchHit]``; None
        (default) builds the offline Wikipedia backend on first use.
      snippet_chars: each summary is cut to this many characters.
    """

    name = "locate"
    description = (
        "Look up a US city in the encyclopedia and return its summary. Arguments as JSON: "
        "location ('City, ST', e.g. 'Austin, TX'), optional max_results (1-5)."
    )
    parameters = {
        "type": "object",
        "properties": {
            "location": {
                "type": "string",
                "description": "a US city and two-letter state code, e.g. 'Austin, TX'",
            },
            "max_results": {
                "type": "integer",
                "minimum": 1,
                "maximum": 5,
                "default": 1,
                "description": "how many matching entries to return",
            },
        },
        "required": ["location"],
    }
    validators = {"location": check_us_location}
    side_effect = SideEffect.READ_ONLY
    timeout = 30.0

    def __init__(self, backend: Any = None, *, snippet_chars: int = 400) -> None:
        if backend is not None and not callable(getattr(backend, "search", None)):
            raise TypeError(
                f"LocationLookupTool(backend={backend!r}): a backend needs a "
                "search(query: str, max_results: int) -> list[SearchHit] method"
            )
        if backend is None:
            from conveyor_hf.tools.search_offline import OfflineSearchBackend

            backend = OfflineSearchBackend(snippet_chars=max(int(snippet_chars), 200))
        self.backend = backend  # created here so that every call's copy shares it
        self.snippet_chars = int(snippet_chars)

    def warm_up(self) -> None:
        """Open (or build) the search index while the model writes the arguments."""
        warm = getattr(self.backend, "warm_up", None)
        if callable(warm):
            warm()

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()

    def act(self, arguments: dict[str, Any]) -> str:
        city, code = split_us_location(arguments["location"])
        state = US_STATES[code]
        wanted = int(arguments.get("max_results", 1))
        city_n, state_n = _norm(city), _norm(state)
        exact = {city_n, f"{city_n} {state_n}", f"{city_n} city", f"{city_n} {_norm(code)}"}
        found: list[tuple[int, int, Any]] = []  # (0 for the city's own article, order, hit)
        seen: list[str] = []
        for query in (f"{city}, {state}", city, f"{city} {state}"):
            for hit in self.backend.search(query, max(5, wanted)):
                if hit.title in seen:
                    continue
                seen.append(hit.title)
                title_n, text_n = _norm(hit.title), _norm(f"{hit.title} {hit.snippet}")
                if title_n.startswith(city_n) and state_n in text_n:
                    found.append((0 if title_n in exact else 1, len(found), hit))
            if sum(1 for rank, _, _ in found if rank == 0) >= wanted:
                break
        found.sort(key=lambda item: item[:2])
        place = f"{city}, {code}"
        if not found:
            nearest = f" (nearest entries: {', '.join(seen[:3])})" if seen else ""
            return f"No encyclopedia entry found for {place} ({city}, {state}){nearest}."
        lines = []
        for _, _, hit in found[:wanted]:
            snippet = shorten(hit.snippet, self.snippet_chars, at_word=True)
            lines.append(f"{place} \u2014 {hit.title}: {snippet}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"LocationLookupTool(backend={type(self.backend).__name__})"
