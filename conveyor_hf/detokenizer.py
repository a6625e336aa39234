"""Token ids to text deltas, one token at a time, for one conversation.

Engines that deliver token ids (``model.generate``) turn each new id into the text it
completes here, so the parsers see the same text a full ``decode`` would give.
"""

from __future__ import annotations

from typing import Sequence


class IncrementalDetokenizer:
    """Turns one row's token ids into text deltas, one token at a time.

    Decoding each token alone breaks multi-byte characters split over tokens and
    tokenizers that merge or strip spaces. Like vLLM and TGI, this decodes a short
    window of recent tokens twice (with and without the newest) and returns the
    difference, holding it back while it ends in an incomplete character (U+FFFD).
    ``context`` is the ids just before the first new token, for correct leading spaces.
    """

    def __init__(self, tokenizer, context: Sequence[int] = (), *, window: int = 6) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = list(context)[-window:]
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def push(self, token_id: int) -> str:
        """Add a token; return the text it completes (possibly "")."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            if self.prefix_offset > 64:  # keep the window short: decoding cost stays flat
                drop = self.prefix_offset
                self.ids = self.ids[drop:]
                self.prefix_offset, self.read_offset = 0, self.read_offset - drop
            return full[len(prefix) :]
        return ""

    def flush(self) -> str:
        """Whatever is held back (an incomplete character at the end of the answer)."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :] if len(full) > len(prefix) else ""

    def restart(self, context: Sequence[int], window: int = 6) -> None:
        """Continue after ids appended by the caller (a tool result)."""
        self.ids = list(context)[-window:]
        self.prefix_offset, self.read_offset = 0, len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
