"""``ScriptedTool``: a tool whose behaviour you script, for tests and demos.

Like httpx's ``MockTransport``, it ships with the library: it lets you exercise the
whole tool loop (parsing, scheduling, re-prompting, timelines) without a kernel or a
network. Units are lines; each takes ``delay`` seconds (sleeping stands for I/O) and
answers with ``respond(line)``; lines in ``fail_on`` fail.

    tool = ScriptedTool("lookup", respond=lambda q: f"result for {q}", delay=0.2)
"""

from __future__ import annotations

import time
from typing import Callable, ClassVar, Collection

from parsers.lines import LineParser
from parsers.unit import Unit

from conveyor_hf.tools.base import SideEffect, Tool, UnitOutput


class ScriptedTool(Tool):
    """A line-unit tool with scripted outputs, latency and failures."""

    name: ClassVar[str] = "scripted"
    description: ClassVar[str] = "Answers each input line with a scripted output."
    parameters: ClassVar[dict] = {
        "type": "object",
        "properties": {"input": {"type": "string", "description": "one input per line"}},
        "required": ["input"],
    }
    side_effect: ClassVar[SideEffect] = SideEffect.PURE

    def __init__(
        self,
        name: str = "scripted",
        *,
        respond: Callable[[str], str] = lambda line: line.upper(),
        delay: float = 0.0,
        fail_on: Collection[str] = (),
        fence_languages: tuple[str, ...] = (),
        max_concurrency: int = 1,
        description: str | None = None,
    ) -> None:
        # Instance attributes shadow the class-level declarations of Tool.
        self.name = name  # type: ignore[misc]
        self.fence_languages = fence_languages  # type: ignore[misc]
        if description is not None:
            self.description = description  # type: ignore[misc]
        self.respond = respond
        self.delay = delay
        self.fail_on = set(fail_on)
        self.max_concurrency = max_concurrency
        self.executed: list[str] = []

    def make_parser(self) -> LineParser:
        return LineParser()

    def execute(self, unit: Unit) -> UnitOutput:
        line = str(unit.value if unit.value is not None else unit.text).strip()
        if self.delay:
            time.sleep(self.delay)
        self.executed.append(line)
        if line in self.fail_on:
            return UnitOutput(error=f"{self.name} failed on {line!r} (scripted failure)")
        return UnitOutput(self.respond(line))
