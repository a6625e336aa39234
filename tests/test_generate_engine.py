"""The generate engine behind the seam: caches, refused keywords, and the caller's tokenizer."""

import warnings

import pytest
import torch
from transformers import DynamicCache

from conveyor_hf.engines import Engine, GenerateEngine
from conveyor_hf.engines.generate import cache_keyword
from conveyor_hf.generator import ConveyorGenerator
from conveyor_hf.tools.scripted import ScriptedTool

BATCH = [[{"role": "user", "content": "one"}], [{"role": "user", "content": "two"}]]
# Row 0 calls the tool once (two rounds); row 1 writes no call (one round).
SCRIPTS = ["A\n```echo\nx\n```\nB", "plain answer"]


def echo():
    return ScriptedTool("echo", fence_languages=("echo",), respond=lambda line: f"ECHO {line}")


def test_the_default_engine_is_generate_and_an_explicit_one_is_the_same(tiny_model, tokenizer):
    implicit = ConveyorGenerator(tiny_model, tokenizer, tools=[echo()])
    assert isinstance(implicit.engine, GenerateEngine) and implicit.model is tiny_model
    explicit = ConveyorGenerator(GenerateEngine(tiny_model), tokenizer, tools=[echo()])
    a = implicit.generate(BATCH, replay=SCRIPTS, max_new_tokens=60)
    b = explicit.generate(BATCH, replay=SCRIPTS, max_new_tokens=60)
    assert a.texts == b.texts and torch.equal(a.sequences, b.sequences)
    assert isinstance(explicit.engine, Engine)


@pytest.mark.parametrize("keyword", ["cache", "past_key_values"])
def test_a_callers_cache_is_used_for_rows_that_finish_in_different_rounds(tiny_model, tokenizer, keyword):
    cache = DynamicCache(config=tiny_model.config)
    with ConveyorGenerator(tiny_model, tokenizer, tools=[echo()]) as gen:
        reference = gen.generate(BATCH, replay=SCRIPTS, max_new_tokens=60)
        out = gen.generate(BATCH, replay=SCRIPTS, max_new_tokens=60, **{keyword: cache})
    assert out.texts == reference.texts
    assert out.texts[0].endswith("```output\nECHO x\n```\n\nB") and out.texts[1] == "plain answer"
    assert cache.get_seq_length() > 0  # the caller's cache is the one decoded into


def test_cache_is_passed_without_the_deprecated_name(tiny_model, tokenizer, caplog):
    if cache_keyword() != "cache":
        pytest.skip("this transformers has no cache= keyword in generate()")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        with ConveyorGenerator(tiny_model, tokenizer, tools=[echo()]) as gen:
            gen.generate(BATCH, replay=SCRIPTS, max_new_tokens=40)
    assert "deprecated" not in caplog.text


def test_both_cache_names_at_once_are_refused(tiny_model, tokenizer):
    gen = ConveyorGenerator(tiny_model, tokenizer)
    with pytest.raises(ValueError, match="pass the KV cache once"):
        gen.generate("Hi", cache=DynamicCache(), past_key_values=DynamicCache(), max_new_tokens=2)


@pytest.mark.parametrize("keyword", ["output_scores", "output_logits", "output_attentions", "output_hidden_states"])
def test_per_step_outputs_are_refused_by_name(tiny_model, tokenizer, keyword):
    gen = ConveyorGenerator(tiny_model, tokenizer)
    with pytest.raises(ValueError, match=f"{keyword}=True is not supported"):
        gen.generate("Hi", max_new_tokens=2, return_dict_in_generate=True, **{keyword: True})


def test_return_dict_in_generate_gives_the_output_with_sequences(tiny_model, tokenizer):
    gen = ConveyorGenerator(tiny_model, tokenizer)
    out = gen.generate("Hi", max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    reference = tiny_model.generate(**tokenizer("Hi", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert torch.equal(out.sequences, reference)


def test_encode_leaves_the_callers_tokenizer_as_it_was(tiny_model, tokenizer):
    saved_pad, saved_side = tokenizer.pad_token, tokenizer.padding_side
    try:
        tokenizer.pad_token = None
        tokenizer.padding_side = "right"
        gen = ConveyorGenerator(tiny_model, tokenizer)
        ids, mask = gen.encode(["a", "a much longer prompt"])
        assert mask[0, 0] == 0  # left-padded all the same
        assert tokenizer.pad_token is None and tokenizer.padding_side == "right"
    finally:
        tokenizer.pad_token, tokenizer.padding_side = saved_pad, saved_side


def test_an_engine_without_a_model_needs_the_tokenizer():
    class NoModel(Engine):
        def default_generation_config(self):
            raise NotImplementedError

        def run(self, loop):
            raise NotImplementedError

    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        ConveyorGenerator(NoModel())


def test_cancel_stops_every_row_without_waiting_for_tools(tiny_model, tokenizer):
    import threading

    release, entered, finished = threading.Event(), threading.Event(), threading.Event()

    def respond(line):
        entered.set()
        release.wait(30)
        finished.set()
        return "late"

    tool = ScriptedTool("echo", fence_languages=("echo",), respond=respond)
    cancel = threading.Event()

    def on_event(event):
        if event.kind == "text" and "y" in event.text:  # unit "x" was handed over; "y" is being written
            cancel.set()

    try:
        with ConveyorGenerator(tiny_model, tokenizer, tools=[tool]) as gen:
            out = gen.generate(BATCH, replay=["A\n```echo\nx\ny\n```\nB", "plain answer"], max_new_tokens=60,
                               stream=on_event, cancel=cancel)
        assert out.stop_reasons == ["cancelled", "cancelled"]
        assert "```output" not in out.texts[0] and not out.texts[0].endswith("B")
        assert not finished.is_set()  # generate returned while the tool was still blocked
    finally:
        release.set()


def test_a_model_loaded_with_device_map_keeps_ids_and_cache_on_its_device(tiny_model, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    tiny_model.save_pretrained(tmp_path)
    mapped = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="auto").eval()
    with ConveyorGenerator(tiny_model, tokenizer, tools=[echo()]) as gen:
        reference = gen.generate(BATCH, replay=SCRIPTS, max_new_tokens=60)
    with ConveyorGenerator(mapped, tokenizer, tools=[echo()]) as gen:
        out = gen.generate(BATCH, replay=SCRIPTS, max_new_tokens=60)
    assert out.texts == reference.texts
    assert out.sequences.device == mapped.device
