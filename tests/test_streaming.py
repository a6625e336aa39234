"""Streamers and the event iterator: the whole answer, tool results included, once, in order."""

import threading

import pytest
from transformers import TextIteratorStreamer, TextStreamer

from conveyor_hf.generator import ConveyorGenerator
from conveyor_hf.tools.scripted import ScriptedTool

ASK = [{"role": "user", "content": "say hello"}]
SCRIPT = "Sure.\n```echo\nhello\n```\nDone."


def echo(**kw):
    return ScriptedTool("echo", fence_languages=("echo",), respond=lambda line: f"ECHO {line}", **kw)


class Recording(TextStreamer):
    def __init__(self, tokenizer):
        super().__init__(tokenizer, skip_prompt=True)
        self.shown, self.ends = [], 0

    def on_finalized_text(self, text, stream_end=False):
        self.shown.append(text)
        self.ends += int(stream_end)


def test_a_text_streamer_shows_the_whole_answer_and_ends_once(tiny_model, tokenizer):
    streamer = Recording(tokenizer)
    with ConveyorGenerator(tiny_model, tokenizer, tools=[echo()]) as gen:
        out = gen.generate(ASK, replay=[SCRIPT], max_new_tokens=80, streamer=streamer)
    assert "".join(streamer.shown) == out.text  # results included, nothing twice
    assert "```output\nECHO hello\n```" in "".join(streamer.shown)
    assert streamer.ends == 1


def test_a_text_iterator_streamer_reads_the_answer_from_another_thread(tiny_model, tokenizer):
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=60)
    gen = ConveyorGenerator(tiny_model, tokenizer, tools=[echo()])
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        out=gen.generate(ASK, replay=[SCRIPT], max_new_tokens=80, streamer=streamer)))
    worker.start()
    text = "".join(streamer)  # ends when end() is called
    worker.join(60)
    gen.close()
    assert text == result["out"].text


def test_a_streamer_refuses_several_rows(tiny_model, tokenizer):
    gen = ConveyorGenerator(tiny_model, tokenizer)
    with pytest.raises(ValueError, match="streamer= shows one answer, but this call has 2 rows"):
        gen.generate([ASK, ASK], max_new_tokens=2, streamer=Recording(tokenizer))


def test_the_event_iterator_yields_text_units_and_results_then_the_output(tiny_model, tokenizer):
    with ConveyorGenerator(tiny_model, tokenizer, tools=[echo()]) as gen:
        stream = gen.stream(ASK, replay=[SCRIPT], max_new_tokens=80)
        events = list(stream)
    kinds = [e.kind for e in events]
    assert "unit" in kinds and kinds.count("result") == 1
    text = "".join(e.text for e in events if e.kind in ("text", "result"))
    assert text == stream.output.text
    assert kinds.index("result") > max(i for i, k in enumerate(kinds) if k == "unit")  # unit before its result


def test_leaving_the_iterator_early_cancels_the_generation(tiny_model, tokenizer):
    with ConveyorGenerator(tiny_model, tokenizer, tools=[echo()]) as gen:
        with gen.stream(ASK, replay=["word " * 60], max_new_tokens=120) as stream:
            for event in stream:
                if event.kind == "text":
                    break
        assert stream.output is not None and stream.output.stop_reasons == ["cancelled"]


def test_errors_of_the_generation_reach_the_consumer(tiny_model, tokenizer):
    gen = ConveyorGenerator(tiny_model, tokenizer)
    with pytest.raises(ValueError, match="num_beams=2 is not supported"):
        list(gen.stream("Hi", num_beams=2))
