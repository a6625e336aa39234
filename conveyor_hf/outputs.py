"""What ``generate`` gives back: the final :class:`ConveyorOutput` and the live
:class:`StreamEvent` s a ``stream`` callback receives while it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from conveyor_hf.timeline import CallRecord, Timeline
from conveyor_hf.tools.base import UnitRecord
from conveyor_hf.tools.caller import CallerToolCall


@dataclass
class StreamEvent:
    """What a ``stream`` callback receives, as it happens.

    ``kind`` is ``"text"`` (a delta of model text), ``"unit"`` (a tool unit finished;
    ``record`` holds it; usually sent from a tool worker thread, so a callback must be
    thread-safe) or ``"result"`` (the text appended after a call, as the model will see
    it; ``shown`` holds it as a chat client is shown it, the share of
    :attr:`ConveyorOutput.contents`: output blocks where the chat template framed the
    results as ``tool`` turns). With a remote engine, events of different conversations
    come from different threads.
    """

    kind: Literal["text", "unit", "result"]
    row: int
    text: str = ""
    tool: str = ""
    record: UnitRecord | None = None
    shown: str = ""


@dataclass
class ConveyorOutput:
    """The answer(s) of one ``generate`` call.

    ``texts`` has one string per batch row: the model's text with tool results included
    as they were re-prompted. ``sequences`` are token ids laid out like
    ``model.generate``'s (the prompt block, then each row's continuation, right-padded).
    ``stop_reasons`` say how each row ended (``"eos"``, ``"length"``, ``"call"`` when
    the tool-round limit stopped it, ``"abort"``, ``"error"``, ``"tool_calls"`` when it
    called tools the caller runs); ``errors`` hold the message of a row that ended with
    ``"error"`` (a dropped connection, say).
    ``messages`` has each row's answer as chat messages: assistant turns and the
    ``tool`` turns that came back at a turn's end (native output blocks stay inside the
    assistant turn, as code-interpreter transcripts show them); an answer that stopped
    with ``"tool_calls"`` ends with an assistant turn carrying them.
    ``caller_calls`` has, per row, the calls of caller tools to run (empty unless the row
    stopped with ``"tool_calls"``), and ``contents`` the text as a chat client shows it:
    ``texts`` without the markup of those calls.
    """

    texts: list[str]
    sequences: torch.LongTensor
    tool_calls: list[CallRecord]
    timeline: Timeline
    stop_reasons: list[str] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    messages: list[list[dict[str, Any]]] = field(default_factory=list)
    caller_calls: list[list[CallerToolCall]] = field(default_factory=list)
    contents: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The answer of a single-row call (use ``texts`` for a batch)."""
        if len(self.texts) != 1:
            raise ValueError(f"this output has {len(self.texts)} rows; read out.texts[i]")
        return self.texts[0]

    @property
    def content(self) -> str:
        """What a chat client shows of a single-row answer (``contents[0]``)."""
        if len(self.contents) != 1:
            raise ValueError(f"this output has {len(self.contents)} rows; read out.contents[i]")
        return self.contents[0]
