"""Event gates: order tool work against decoding with events, never with sleeps or clocks.

A test that claims "the tool ran this unit before decoding reached that point" holds
decoding at that point until the tool says so, instead of slowing every step and hoping
the tool keeps up; a test that claims "these two units overlapped" holds each until the
other has started. On a loaded machine the gated run only gets slower, never reordered.

- :class:`Signals`: named ``threading.Event`` objects, made on first use;
- :class:`GatedTool`: a ``ScriptedTool`` whose units signal ``started <line>`` and
  ``ended <line>`` and may be held until other signals are set;
- :func:`unit_end_signals`: a ``generate(stream=...)`` callback that signals
  ``ended <key>`` as each unit of any (real) tool ends;
- :class:`DecodeGate`: a logits processor that holds decoding, once, at the first step
  whose decoded text contains a marker, until given signals are set.

Every wait is bounded by ``Signals.timeout`` (generous: :data:`GATE_TIMEOUT`); a signal
that never comes is recorded in ``Signals.missed`` and the run goes on, so a broken
schedule fails the test's ``assert not signals.missed`` instead of hanging it.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

from transformers import LogitsProcessor

from conveyor_hf.outputs import StreamEvent
from conveyor_hf.tools.base import UnitOutput
from conveyor_hf.tools.scripted import ScriptedTool
from parsers.unit import Unit

#: Seconds any one gate waits for a signal before recording it as missed.
GATE_TIMEOUT = 60.0


class Signals:
    """Named events shared by a test's tools and decoding gates (thread-safe).

    ``missed`` lists every signal a wait gave up on; empty means every gate opened.
    """

    def __init__(self, timeout: float = GATE_TIMEOUT) -> None:
        self.timeout = timeout
        self.missed: list[str] = []
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def event(self, name: str) -> threading.Event:
        """The event called ``name`` (made unset on first use)."""
        with self._lock:
            return self._events.setdefault(name, threading.Event())

    def set(self, name: str) -> None:
        self.event(name).set()

    def is_set(self, name: str) -> bool:
        return self.event(name).is_set()

    def wait(self, *names: str) -> bool:
        """Block until every named signal is set (each wait bounded by ``timeout``);
        False, with the first missing name added to ``missed``, if one never came."""
        for name in names:
            if not self.event(name).wait(self.timeout):
                with self._lock:
                    self.missed.append(name)
                return False
        return True

    @contextmanager
    def unit(self, name: str, hold: Sequence[str] = ()) -> Iterator[bool]:
        """Around one unit of work called ``name``: signals ``started <name>``, waits for
        the ``hold`` signals, yields whether they all came, then signals ``ended <name>``."""
        self.set(f"started {name}")
        try:
            yield self.wait(*hold)
        finally:
            self.set(f"ended {name}")


class GatedTool(ScriptedTool):
    """A ``ScriptedTool`` whose units signal their start and end on ``signals``.

    A unit is named by its stripped argument (its line, or a plan task's argument);
    ``hold[name]`` lists the signals that unit waits for before it answers, e.g.
    ``{"a": ["started b"], "b": ["started a"]}`` makes units ``a`` and ``b`` overlap, or
    fail with an error naming the signal if the tool does not run them at the same time.
    """

    def __init__(
        self,
        name: str = "scripted",
        *,
        signals: Signals | None = None,
        hold: Mapping[str, Sequence[str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.signals = signals if signals is not None else Signals()
        self.hold = {line: tuple(names) for line, names in (hold or {}).items()}

    def execute(self, unit: Unit) -> UnitOutput:
        line = str(unit.argument).strip()
        with self.signals.unit(line, self.hold.get(line, ())) as released:
            if not released:
                return UnitOutput(error=f"{self.name}: {line!r} was held for a signal that never came")
            return super().execute(unit)


def unit_end_signals(signals: Signals) -> Callable[[StreamEvent], None]:
    """A ``generate(stream=...)`` callback signalling ``ended <key>`` as each tool unit
    ends: a JSON member's key, else the unit's stripped text (a Python statement)."""

    def on_event(event: StreamEvent) -> None:
        if event.kind == "unit" and event.record is not None:
            unit = event.record.unit
            signals.set(f"ended {unit.key if unit.key is not None else unit.text.strip()}")

    return on_event


class DecodeGate(LogitsProcessor):
    """Holds decoding once, when the text decoded so far (of the first row, since the first
    step) contains ``marker``, until every signal in ``names`` is set.

    Logits processors run before each step, after the conveyor has seen every token in
    ``input_ids``, so tool work signalled here happened before decoding went past
    ``marker``. ``reached`` says whether decoding ever got there.
    """

    def __init__(self, tokenizer: Any, marker: str, signals: Signals, *names: str) -> None:
        self.tokenizer = tokenizer
        self.marker = marker
        self.signals = signals
        self.names = names
        self.reached = False
        self._start: int | None = None

    def __call__(self, input_ids, scores):
        if self._start is None:
            self._start = input_ids.shape[1]  # the prompt: the first step sees nothing else
        if not self.reached:
            text = self.tokenizer.decode(input_ids[0, self._start:], skip_special_tokens=True)
            if self.marker in text:
                self.reached = True
                self.signals.wait(*self.names)
        return scores
