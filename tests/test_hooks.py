"""The incremental detokenizer and the per-step hook."""

import time

import pytest
import torch

from conveyor_hf.hooks import ConveyorHook, IncrementalDetokenizer, RowState
from parsers.calls import CallDetector, fence_syntax

TEXTS = [
    "Hello world, this is plain ASCII text with  double  spaces.",
    "Multi-byte: naïve café, 東京タワー, emoji 🎉🚀 and Ελληνικά.",
    "    indented code:\n\tdef f(x):\n\t\treturn x ** 2  # ✓\n",
    "```python\nprint('héllo')\n```\n",
]


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_concatenate_to_the_full_decode(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert all("\ufffd" not in p for p in pieces)


def test_context_gives_correct_leading_text(tokenizer):
    prefix = tokenizer("The answer is", add_special_tokens=False)["input_ids"]
    rest = tokenizer(" forty two", add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer, context=prefix)
    full = tokenizer.decode(prefix + rest)
    assert "".join(detok.push(i) for i in rest) + detok.flush() == full[len(tokenizer.decode(prefix)):]


def test_long_streams_keep_a_short_window(tokenizer):
    ids = tokenizer(" ".join(["word"] * 500), add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer)
    text = "".join(detok.push(i) for i in ids)
    assert text == tokenizer.decode(ids)
    assert len(detok.ids) < 80


class Recorder:
    def __init__(self):
        self.fed, self.closed = [], None

    def feed(self, text):
        self.fed.append(text)

    def close(self, closed):
        self.closed = closed

    failed = False


def python_rows(tokenizer, count, handler=Recorder):
    """A hook following ``count`` rows that call Python in fences; every call it opens
    gets a new ``handler``. Returns the hook, its rows and the handlers so far."""
    handlers = []

    def open_call(state, event):
        handlers.append(handler())
        return handlers[-1]

    hook = ConveyorHook({tokenizer.eos_token_id}, open_call)
    rows = [RowState(row=i, detector=CallDetector([fence_syntax("python", "python")]),
                     detokenizer=IncrementalDetokenizer(tokenizer), budget=1000) for i in range(count)]
    hook.start_round(rows)
    return hook, rows, handlers


def test_hook_stops_a_row_when_its_call_closes_and_not_other_rows(tokenizer):
    hook, rows, handlers = python_rows(tokenizer, 2)
    texts = ["ok ```python\n```python\nx = 1\n```\nafter", "no call here, just words"]
    streams = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    streams[1] = streams[1] + [tokenizer.eos_token_id]
    length = max(map(len, streams))
    seq = torch.empty(2, 0, dtype=torch.long)
    flags_seen = []
    for step in range(length):
        column = [s[step] if step < len(s) else tokenizer.eos_token_id for s in streams]
        seq = torch.cat([seq, torch.tensor(column).unsqueeze(1)], dim=1)
        flags_seen.append(hook(seq, None).tolist())
    assert rows[0].stop == "call"
    assert "".join(handlers[0].fed) == "x = 1\n" and handlers[0].closed is True
    assert rows[1].stop == "eos" and rows[1].stop_length == len(streams[1])
    first_true = [next(i for i, f in enumerate(flags_seen) if f[r]) for r in range(2)]
    assert first_true[1] == len(streams[1]) - 1  # row 1 stops exactly at its EOS
    assert rows[0].stop_length == first_true[0] + 1  # row 0 at the token that closed its call
    assert rows[0].text.startswith("ok ```python\n```python\nx = 1\n```")


class SlowRecorder(Recorder):
    """A handler that takes a while per fed piece and times itself."""

    def __init__(self):
        super().__init__()
        self.spent = 0.0

    def feed(self, text):
        begin = time.perf_counter()
        time.sleep(0.002)
        super().feed(text)
        self.spent += time.perf_counter() - begin


def test_feed_seconds_cover_the_work_done_while_feeding_a_token(tokenizer):
    hook, [row], handlers = python_rows(tokenizer, 1, SlowRecorder)
    ids = tokenizer("ok\n```python\nx = 1\ny = 2\n```\n", add_special_tokens=False)["input_ids"]
    for step in range(len(ids)):
        hook(torch.tensor([ids[: step + 1]]), None)
    assert row.stop == "call" and "".join(handlers[0].fed) == "x = 1\ny = 2\n"
    # The handler's own time is inside the conversation's feed time, which also holds the
    # detokenizer's and the call detector's work.
    assert row.feed_seconds > handlers[0].spent > 0
