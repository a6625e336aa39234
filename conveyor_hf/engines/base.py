"""The engine interface: who decodes, for the engine-independent tool loop.

An engine decodes the conversations of one :class:`~conveyor_hf.loop.ToolLoop` and hands
every new token id or text delta to the conversation it belongs to
(``Conversation.feed_token`` / ``feed_delta``). When a conversation says stop, the engine
stops that conversation alone (a stopping-criteria row, a cancelled request, a closed
HTTP stream) and calls ``loop.settle(conversation, ...)``, which waits only for
unfinished tool work and returns the ids appended after the call, or None when the answer
is done. The engine then resumes that conversation from prompt + kept tokens + appended
ids (from its own cache, or the server's prefix cache). Tools never see the engine;
parsers never see either.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from transformers import GenerationConfig

    from conveyor_hf.loop import ToolLoop


class Engine(abc.ABC):
    """Decodes conversations for the tool loop; see the module docstring for the contract.

    ``supports_replay``: whether ``generate(replay=...)`` can force a recorded answer
    (it needs the logits). ``device``: where prompt ids go (CPU for remote engines).
    """

    name: ClassVar[str] = "engine"
    supports_replay: ClassVar[bool] = False

    @property
    def device(self) -> Any:
        import torch

        return torch.device("cpu")

    @abc.abstractmethod
    def default_generation_config(self) -> "GenerationConfig":
        """The generation defaults that ``generate`` keywords update (the model's own)."""

    def check_options(self, config: "GenerationConfig", extra: dict[str, Any]) -> None:
        """Refuse, by name and with the fix, any generation option this engine cannot honour."""

    @abc.abstractmethod
    def run(self, loop: "ToolLoop") -> None:
        """Decode every conversation of ``loop`` until ``loop.settle`` says it is done."""

    def describe(self) -> str:
        """One line for logs and the CLI: which engine, where."""
        return self.name

    def close(self) -> None:
        """Release what the engine holds (connections). Idempotent."""
