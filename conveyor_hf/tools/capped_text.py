"""``CappedText``: a text sink of bounded size that keeps the head and the tail of what it got.

The Python tool collects a statement's output into one, so a statement that prints
gigabytes costs this process at most ``limit`` characters.
"""

from __future__ import annotations

import collections

__all__ = ["CappedText"]


class CappedText:
    """A text sink that keeps at most ``limit`` characters: the head and the tail.

    Memory stays bounded however much is written, so a statement that prints gigabytes
    cannot exhaust the collector. ``limit=None`` keeps everything.

    >>> sink = CappedText(10)
    >>> sink.write("0123456789" * 3)
    >>> sink.getvalue()
    '01234\\n... [20 characters cut] ...\\n56789'
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.total = 0
        self._head: list[str] = []
        self._head_room = limit - limit // 2 if limit is not None else None
        self._tail: collections.deque[str] = collections.deque()
        self._tail_len = 0
        self._tail_limit = limit // 2 if limit is not None else 0

    def write(self, text: str) -> None:
        if not text:
            return
        self.total += len(text)
        if self._head_room is None:
            self._head.append(text)
            return
        if self._head_room > 0:
            taken = text[: self._head_room]
            self._head.append(taken)
            self._head_room -= len(taken)
            text = text[len(taken) :]
        if not text or self._tail_limit == 0:
            return
        if len(text) >= self._tail_limit:
            self._tail.clear()
            self._tail.append(text[-self._tail_limit :])
            self._tail_len = self._tail_limit
            return
        self._tail.append(text)
        self._tail_len += len(text)
        while self._tail_len > self._tail_limit:
            excess = self._tail_len - self._tail_limit
            first = self._tail[0]
            if len(first) <= excess:
                self._tail.popleft()
                self._tail_len -= len(first)
            else:
                self._tail[0] = first[excess:]
                self._tail_len -= excess

    def skip(self, count: int) -> None:
        """Count ``count`` characters that were cut before they got here (by the kernel)."""
        if count <= 0:
            return
        self.total += count
        if self._head_room is not None and self._head_room > 0:
            self._head_room = 0  # what follows the cut belongs to the tail, never to the head
        self._tail.clear()
        self._tail_len = 0

    @property
    def cut(self) -> int:
        """How many characters were dropped from the middle."""
        kept = sum(map(len, self._head)) + self._tail_len
        return self.total - kept

    def getvalue(self) -> str:
        head, tail = "".join(self._head), "".join(self._tail)
        cut = self.total - len(head) - len(tail)
        if cut <= 0:
            return head + tail
        before = "" if not head or head.endswith("\n") else "\n"
        return f"{head}{before}... [{cut} characters cut] ...\n{tail}"
