"""Several JSON tool calls in one assistant turn: they run as each closes while the model
writes the rest of the turn, and their results come back as tool turns when it ends."""

import threading

from transformers import LogitsProcessor

from conveyor_hf.generator import ConveyorGenerator
from conveyor_hf.tools.base import SideEffect
from conveyor_hf.tools.scripted import ScriptedTool

ASK = [{"role": "user", "content": "look both up"}]
CALL = '<tool_call>{{"name": "lookup", "arguments": {{"input": "{0}"}}}}</tool_call>'
TURN = CALL.format("a") + "\n" + CALL.format("b") + "<|im_end|>Both found."


def lookup(**kw):
    return ScriptedTool("lookup", respond=kw.pop("respond", lambda q: f"FOUND {q}"), **kw)


def run(model, tok, tools, *, mode="partial", parallel=True, **kw):
    with ConveyorGenerator(model, tok, tools=tools, mode=mode, parallel_tool_calls=parallel) as gen:
        return gen.generate(ASK, replay=[TURN], max_new_tokens=160, **kw)


def test_results_come_back_as_tool_turns_when_the_turn_ends(tiny_model, tokenizer):
    out = run(tiny_model, tokenizer, [lookup()])
    turns = ("<|im_end|>\n<|im_start|>tool\nFOUND a<|im_end|>\n<|im_start|>tool\nFOUND b<|im_end|>\n"
             "<|im_start|>assistant\n")
    assert out.text == CALL.format("a") + "\n" + CALL.format("b") + turns + "Both found."
    assert [c.round for c in out.tool_calls] == [0, 0]  # one turn, one round
    assert out.timeline.summary()["rounds"] == 2 and out.stop_reasons == ["eos"]


def test_the_old_shape_stops_at_every_call(tiny_model, tokenizer):
    out = run(tiny_model, tokenizer, [lookup()], parallel=False)
    assert [c.round for c in out.tool_calls] == [0, 1]
    assert out.text.startswith(CALL.format("a") + "<|im_end|>\n<|im_start|>tool\nFOUND a<|im_end|>")


class WaitForUnit(LogitsProcessor):
    """Holds decoding (bounded) once the second call has opened until the first call's
    unit has started: the ordering under test is then an event, not a race."""

    def __init__(self, tokenizer, started: threading.Event):
        self.tokenizer, self.started, self.held = tokenizer, started, False

    def __call__(self, input_ids, scores):
        if not self.held and '"b"' in self.tokenizer.decode(input_ids[0, -12:]):
            self.held = self.started.wait(10)
        return scores


def test_partial_runs_the_first_call_while_the_second_is_written(tiny_model, tokenizer):
    started = threading.Event()

    def respond(q):
        started.set()
        return f"FOUND {q}"

    out = run(tiny_model, tokenizer, [lookup(respond=respond)], logits_processor=[WaitForUnit(tokenizer, started)])
    first, second = out.tool_calls
    assert first.units[0].start < second.closed  # ran before the turn's second call was complete
    lazy = run(tiny_model, tokenizer, [lookup()], mode="lazy")
    assert lazy.text == out.text
    turn_end = lazy.timeline.rounds[0].decode_end
    assert all(u.start >= turn_end for c in lazy.tool_calls for u in c.units)  # lazy: after the turn


def test_mutating_calls_run_in_call_order(tiny_model, tokenizer):
    import time

    def respond(q):
        if q == "a":
            time.sleep(0.2)  # long enough that an unordered second call would overlap it
        return f"DONE {q}"

    tool = lookup(respond=respond)
    tool.side_effect = SideEffect.MUTATING
    out = run(tiny_model, tokenizer, [tool])
    first, second = out.tool_calls
    assert second.units[0].start >= first.units[0].end
    assert "DONE a" in out.text and "DONE b" in out.text


def test_stateful_calls_hand_over_nothing_until_the_earlier_call_finished(tiny_model, tokenizer):
    import time

    log = []

    def respond(q):
        log.append(f"start {q}")
        if q == "a":
            time.sleep(0.2)  # an unordered second call would start meanwhile
        log.append(f"end {q}")
        return f"DONE {q}"

    tool = lookup(respond=respond)
    tool.side_effect = SideEffect.STATEFUL  # runs early, so only the order rule keeps b after a
    out = run(tiny_model, tokenizer, [tool])
    assert log == ["start a", "end a", "start b", "end b"]
    assert [c.units[0].output for c in out.tool_calls] == ["DONE a", "DONE b"]


def test_the_answer_as_chat_messages(tiny_model, tokenizer):
    out = run(tiny_model, tokenizer, [lookup()])
    [messages] = out.messages
    assert messages == [
        {"role": "assistant", "content": CALL.format("a") + "\n" + CALL.format("b")},
        {"role": "tool", "name": "lookup", "content": "FOUND a"},
        {"role": "tool", "name": "lookup", "content": "FOUND b"},
        {"role": "assistant", "content": "Both found."},
    ]
