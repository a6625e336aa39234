"""Line units: one unit per non-blank line (a search query, a calculator expression)."""

from __future__ import annotations

from parsers.unit import Unit


class LineParser:
    """Emits each non-blank line the moment its newline arrives.

    ``Unit.text`` is the line with its newline (blank lines travel with the next unit,
    so concatenating every unit gives back the fed text, less trailing blank lines);
    ``Unit.value`` is the line stripped of surrounding white space. ``close()`` emits an
    unterminated last line.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._buffer = ""
        self._index = 0
        self.error: str | None = None

    def feed(self, text: str) -> list[Unit]:
        self._buffer += text
        if "\n" not in text:
            return []
        units: list[Unit] = []
        start = 0
        while True:
            newline = self._buffer.find("\n", start)
            if newline < 0:
                break
            line = self._buffer[start : newline + 1]
            start = newline + 1
            if line.strip():
                units.append(self._unit(self._buffer[: start]))
                self._buffer = self._buffer[start:]
                start = 0
        return units

    def close(self) -> list[Unit]:
        rest, self._buffer = self._buffer, ""
        return [self._unit(rest)] if rest.strip() else []

    def _unit(self, text: str) -> Unit:
        unit = Unit(text=text, index=self._index, value=text.strip())
        self._index += 1
        return unit
