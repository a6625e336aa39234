"""The tool loop on a tiny random model, with replayed (forced) answers.

Replay forces a fixed text through the real forward pass, so these tests check the
loop's mechanics — stopping, waiting, re-prompting, KV reuse, batching — exactly.
"""

import pytest
import torch
from transformers import DynamicCache, LogitsProcessor, StoppingCriteria

from conveyor_hf.generator import ConveyorGenerator
from conveyor_hf.tools.base import Tool
from conveyor_hf.tools.scripted import ScriptedTool
from gates import DecodeGate, GatedTool, Signals
from parsers.lines import LineParser
from parsers.unit import Unit

SCRIPT = "Sure.\n```echo\nhello\nworld\n```\nDone: the tool said hello."
TWO_CALLS = "A\n```echo\none\n```\nB\n```echo\ntwo\n```\nC"
MESSAGES = [{"role": "user", "content": "say hello"}]


def echo(kind: type[ScriptedTool] = ScriptedTool, **kw) -> ScriptedTool:
    return kind("echo", fence_languages=("echo",), respond=lambda line: f"ECHO {line}", **kw)


def run(model, tok, script=SCRIPT, mode="partial", tools=None, **kw):
    with ConveyorGenerator(model, tok, tools=tools if tools is not None else [echo()], mode=mode) as gen:
        return gen.generate(MESSAGES, replay=[script] if isinstance(script, str) else script,
                            max_new_tokens=kw.pop("max_new_tokens", 120), **kw)


def test_greedy_without_tools_equals_model_generate(tiny_model, tokenizer):
    enc = tokenizer(["Hello there", "A much longer prompt than the first"], return_tensors="pt",
                    padding=True, padding_side="left")
    reference = tiny_model.generate(**enc, max_new_tokens=24, do_sample=False)
    gen = ConveyorGenerator(tiny_model, tokenizer)
    out = gen.generate(enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=24, do_sample=False)
    assert torch.equal(out.sequences, reference)
    single = gen.generate("Hello there", max_new_tokens=24, do_sample=False)
    reference_single = tiny_model.generate(**tokenizer("Hello there", return_tensors="pt"), max_new_tokens=24,
                                           do_sample=False)
    assert torch.equal(single.sequences, reference_single)


def test_tool_result_is_appended_and_decoding_resumes(tiny_model, tokenizer):
    out = run(tiny_model, tokenizer)
    assert out.text == (
        "Sure.\n```echo\nhello\nworld\n```\n```output\nECHO hello\nECHO world\n```\n\nDone: the tool said hello."
    )
    assert out.stop_reasons == ["eos"]
    [call] = out.tool_calls
    assert call.tool == "echo" and [u.output for u in call.units] == ["ECHO hello", "ECHO world"]
    assert all(u.start is not None and u.end >= u.start for u in call.units)
    assert call.result.output == "ECHO hello\nECHO world"


def test_partial_and_lazy_give_identical_text_and_ids(tiny_model, tokenizer):
    partial = run(tiny_model, tokenizer, TWO_CALLS, mode="partial")
    lazy = run(tiny_model, tokenizer, TWO_CALLS, mode="lazy")
    assert partial.text == lazy.text
    assert torch.equal(partial.sequences, lazy.sequences)
    assert partial.timeline.summary()["rounds"] == lazy.timeline.summary()["rounds"] == 3
    for out in (partial, lazy):  # the conversations' own work is a part of decoding, in both modes
        summary = out.timeline.summary()
        assert 0 < summary["feed"] < summary["decode"]


def test_partial_mode_starts_units_before_the_call_closes(tiny_model, tokenizer):
    signals = Signals()
    # Decoding waits after "world" until the tool has started "hello": the call is still open.
    gate = DecodeGate(tokenizer, "hello\nworld", signals, "started hello")
    out = run(tiny_model, tokenizer, mode="partial", tools=[echo(GatedTool, signals=signals)], logits_processor=[gate])
    lazy = run(tiny_model, tokenizer, mode="lazy")
    assert gate.reached and not signals.missed
    closed = out.tool_calls[0].closed
    assert out.tool_calls[0].units[0].start < closed  # ran while the rest was decoded
    assert all(u.start >= lazy.tool_calls[0].closed for u in lazy.tool_calls[0].units)


def test_second_round_prefills_only_the_appended_tokens(tiny_model, tokenizer):
    cache = DynamicCache(config=tiny_model.config)
    out = run(tiny_model, tokenizer, past_key_values=cache)
    with ConveyorGenerator(tiny_model, tokenizer, tools=[echo()]) as gen:
        prompt_len = gen.encode(MESSAGES)[0].shape[1]
    appended_ids = tokenizer("\n```output\nECHO hello\nECHO world\n```\n", add_special_tokens=False)["input_ids"]
    assert out.timeline.summary()["prefill_tokens"] == [prompt_len, len(appended_ids) + 1]
    # (round 2 feeds round 1's last token, never fed back yet, then the appended ones.)
    # The cache holds every token but the final EOS, which was never fed back.
    assert cache.get_seq_length() == out.sequences.shape[1] - 1


def test_batch_rows_have_their_own_calls_and_match_single_row_runs(tiny_model, tokenizer):
    scripts = [SCRIPT, "No tool needed here.", TWO_CALLS]
    with ConveyorGenerator(tiny_model, tokenizer, tools=[echo()]) as gen:
        batch = gen.generate([MESSAGES, MESSAGES, MESSAGES], replay=scripts, max_new_tokens=120)
    singles = [run(tiny_model, tokenizer, s).text for s in scripts]
    assert batch.texts == singles
    assert sorted((c.row, c.round) for c in batch.tool_calls) == [(0, 0), (2, 0), (2, 1)]


def test_callers_processors_and_criteria_run_in_every_round(tiny_model, tokenizer):
    class CountingProcessor(LogitsProcessor):
        def __init__(self):
            self.lengths = []

        def __call__(self, input_ids, scores):
            self.lengths.append(input_ids.shape[1])
            return scores

    class CountingCriteria(StoppingCriteria):
        calls = 0

        def __call__(self, input_ids, scores, **kwargs):
            CountingCriteria.calls += 1
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    processor = CountingProcessor()
    out = run(tiny_model, tokenizer, logits_processor=[processor], stopping_criteria=[CountingCriteria()])
    assert out.timeline.summary()["rounds"] == 2
    new_tokens = out.timeline.summary()["new_tokens"]
    assert len(processor.lengths) == new_tokens == CountingCriteria.calls
    assert len(set(processor.lengths)) == new_tokens  # seen growing across both rounds


def test_max_new_tokens_counts_over_the_whole_answer(tiny_model, tokenizer):
    script_tokens = len(tokenizer(SCRIPT, add_special_tokens=False)["input_ids"])
    out = run(tiny_model, tokenizer, max_new_tokens=script_tokens - 3)
    assert out.timeline.summary()["new_tokens"] == script_tokens - 3
    assert out.stop_reasons == ["length"]


def test_max_tool_rounds_stops_re_prompting(tiny_model, tokenizer):
    with ConveyorGenerator(tiny_model, tokenizer, tools=[echo()], max_tool_rounds=1) as gen:
        out = gen.generate(MESSAGES, replay=[TWO_CALLS], max_new_tokens=120)
    assert out.timeline.summary()["rounds"] == 2
    assert out.text.endswith("```output\nECHO two\n```\n")  # the second result is shown, not re-prompted


def test_unclosed_call_at_eos_reports_a_clear_error(tiny_model, tokenizer):
    out = run(tiny_model, tokenizer, "Here:\n```echo\nhello\nworld")
    [call] = out.tool_calls
    assert "not closed" in call.error
    assert [u.output for u in call.units] == ["ECHO hello", "ECHO world"]
    assert "not closed" in out.text and "ECHO world" in out.text


def test_failed_unit_is_reported_to_the_model(tiny_model, tokenizer):
    out = run(tiny_model, tokenizer, tools=[echo(fail_on={"world"})])
    assert "scripted failure" in out.text
    assert out.tool_calls[0].error


def test_sampling_settings_work_and_modes_agree_under_a_seed(tiny_model, tokenizer):
    texts = []
    for mode in ("partial", "lazy"):
        torch.manual_seed(123)
        with ConveyorGenerator(tiny_model, tokenizer, tools=[echo()], mode=mode) as gen:
            out = gen.generate(MESSAGES, do_sample=True, temperature=0.9, top_k=50, max_new_tokens=30,
                               num_return_sequences=2)
        texts.append(out.texts)
    assert len(texts[0]) == 2 and texts[0] == texts[1]


def test_stream_events_rebuild_the_text(tiny_model, tokenizer):
    events = []
    out = run(tiny_model, tokenizer, stream=events.append)
    assert "".join(e.text for e in events if e.kind in ("text", "result")) == out.text
    assert sorted(e.record.output for e in events if e.kind == "unit") == ["ECHO hello", "ECHO world"]


def test_context_manager_closes_tools(tiny_model, tokenizer):
    closed = []

    class Closing(ScriptedTool):
        def close(self):
            closed.append(self.name)

    with ConveyorGenerator(tiny_model, tokenizer, tools=[Closing("echo", fence_languages=("echo",))]):
        pass
    assert closed == ["echo"]


def test_tokenizer_is_found_from_the_model(tiny_model, tokenizer, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = type(tiny_model).from_pretrained(tmp_path)
    out = ConveyorGenerator(model).generate("Hi", max_new_tokens=3, do_sample=False)
    assert out.sequences.shape[1] >= 3


@pytest.mark.parametrize(
    "kwargs, message",
    [({"mode": "fast"}, "mode='partial' or mode='lazy'"), ({"on_error": "ignore"}, "on_error"),
     ({"tools": ["python"]}, "Tool instances"), ({"max_tool_rounds": -1}, "max_tool_rounds")],
)
def test_constructor_errors_name_the_value_and_the_fix(tiny_model, tokenizer, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        ConveyorGenerator(tiny_model, tokenizer, **kwargs)


def test_generate_errors_name_the_value_and_the_fix(tiny_model, tokenizer):
    gen = ConveyorGenerator(tiny_model, tokenizer, tools=[echo()])
    with pytest.raises(ValueError, match="num_beams=2"):
        gen.generate("hi", num_beams=2)
    with pytest.raises(TypeError, match="chat messages"):
        gen.generate(42)
    with pytest.raises(ValueError, match="one text per row"):
        gen.generate("hi", replay=["a", "b"])


def test_two_tools_cannot_claim_the_same_fence(tiny_model, tokenizer):
    with pytest.raises(ValueError, match="both use"):
        ConveyorGenerator(tiny_model, tokenizer, tools=[echo(), ScriptedTool("other", fence_languages=("echo",))])


def test_tool_base_requires_its_methods():
    class Bare(Tool):
        name = "bare"

    assert isinstance(Bare().make_parser(), LineParser)  # the default: one unit per line
    with pytest.raises(NotImplementedError, match="execute"):
        Bare().execute(Unit(text="hello\n"))
