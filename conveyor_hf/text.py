"""Cutting text down to a length for the model, a log line or a trace label.

One convention everywhere: white space runs become single spaces (the result is one line),
and a cut text ends with ``…`` (U+2026), counted in the limit, so the result is never
longer than ``limit`` characters. Prose is better cut between words (``at_word=True``);
code, queries and values are cut where the limit falls, so as much of them as possible is
shown.

Example::

    >>> shorten("SELECT name,   population FROM cities", 20)
    'SELECT name, popula…'
    >>> shorten("The Mariana Trench is the deepest oceanic trench", 30, at_word=True)
    'The Mariana Trench is the…'
"""

from __future__ import annotations

__all__ = ["ELLIPSIS", "shorten"]

#: What a cut text ends with.
ELLIPSIS = "\u2026"


def shorten(text: str, limit: int, *, at_word: bool = False) -> str:
    """``text`` on one line and at most ``limit`` characters, ending with ``…`` if it was cut.

    With ``at_word`` the cut falls after the last whole word that fits (a single word
    longer than the limit is still cut inside) and drops trailing ``,;:`` before the
    ellipsis. Shortening a shortened text to the same or a larger limit changes nothing.
    """
    if limit < 1:
        raise ValueError(f"shorten(limit={limit!r}) must be at least 1 (the ellipsis takes one character)")
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat[: limit - 1]
    if at_word:
        if flat[limit - 1] != " " and " " in cut:  # the cut falls inside a word: drop its start
            cut = cut.rsplit(" ", 1)[0]
        cut = cut.rstrip(" ,;:")
    return cut + ELLIPSIS
