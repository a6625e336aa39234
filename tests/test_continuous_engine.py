"""ContinuousEngine: transformers' continuous batching behind the tool loop.

The mechanics run on tiny models: the random tiny Llama (greedy text with tools off must
equal ``model.generate``'s) and a *bigram* tiny Llama whose attention and MLP write
nothing, so its next token depends only on the current one and its lm_head is set to
write a fixed answer: it calls a tool deterministically, in both engines. Orderings are
gated on events (a tool that blocks until released), never on sleeps. The slow test
uses the default model for a real tool-using answer.
"""

import threading
import time

import pytest
import torch
from conftest import make_tiny_model

from conveyor_hf.engines import ContinuousEngine, GenerateEngine
from conveyor_hf.engines.continuous import ContinuousEngineError
from conveyor_hf.generator import ConveyorGenerator
from conveyor_hf.tools.scripted import ScriptedTool

# The bigram model writes SCRIPTS after the prompt's last token: " alpha" calls the echo tool once, then
# ends with "Done." after the result (which ends in "\n"); " beta" calls nothing.
FILLER = "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun."
SCRIPTS = [" alpha Look<echo>hi</echo>", "\nDone.", " beta plain answer"]
CALLING = " Look<echo>hi</echo>\n```output\nECHO hi\n```\nDone."


def make_bigram_model(tokenizer, scripts, seed: int = 0):
    """A tiny Llama whose greedy output follows ``scripts`` token by token: each layer
    adds nothing to the residual stream, and the lm_head row of every scripted successor
    is aligned with its predecessor's normalised embedding."""
    model = make_tiny_model(tokenizer, seed, hidden_size=64)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embeddings, head = model.model.embed_tokens.weight, model.lm_head.weight
        head.mul_(0.01)
        for text in scripts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            for current, successor in zip(ids, ids[1:]):
                head[successor] += 0.5 * embeddings[current] / embeddings[current].pow(2).mean().sqrt()
    return model


def echo(**kw):
    return ScriptedTool("echo", respond=kw.pop("respond", lambda line: f"ECHO {line}"), **kw)


def wait_until(predicate, what: str, limit: float = 60.0) -> None:
    """Poll ``predicate`` (an event-gated state, not a timing); fail with ``what`` if it never holds."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def bigram(tokenizer):
    return make_bigram_model(tokenizer, SCRIPTS)


@pytest.fixture(scope="module")
def engine(tiny_model):
    with ContinuousEngine(tiny_model, max_cache_tokens=4096, page_size=8) as eng:
        yield eng


@pytest.fixture(scope="module")
def bigram_engine(bigram):
    with ContinuousEngine(bigram, max_cache_tokens=2048, page_size=8) as eng:
        yield eng


# -- tools off: the same tokens as model.generate -------------------------------------
def test_greedy_text_with_tools_off_equals_model_generate(engine, tiny_model, tokenizer):
    gen = ConveyorGenerator(engine, tokenizer)
    out = gen.generate("Hello there, how", max_new_tokens=20, do_sample=False)
    reference = tiny_model.generate(**tokenizer("Hello there, how", return_tensors="pt"), max_new_tokens=20,
                                    do_sample=False)
    assert torch.equal(out.sequences, reference)
    assert out.texts[0] == tokenizer.decode(reference[0, -20:], skip_special_tokens=True)
    assert out.stop_reasons == ["length"] and engine.stats()["followed"] == 0


def test_a_batch_decodes_together_and_equals_each_alone(engine, tokenizer):
    prompts = ["Hello there, how", "a much longer prompt than the first one", "third"]
    gen = ConveyorGenerator(engine, tokenizer)
    batch = gen.generate(prompts, max_new_tokens=15, do_sample=False)
    alone = [gen.generate(p, max_new_tokens=15, do_sample=False).texts[0] for p in prompts]
    assert batch.texts == alone
    assert sorted(r.row for r in batch.timeline.rounds) == [0, 1, 2]  # one request per conversation


def test_concurrent_generate_calls_share_one_engine(engine, tokenizer):
    prompts = [f"request number {i} says" for i in range(4)]
    gen = ConveyorGenerator(engine, tokenizer)
    alone = [gen.generate(p, max_new_tokens=12).texts[0] for p in prompts]
    results: dict[int, str] = {}
    start = threading.Barrier(len(prompts))

    def call(i):
        start.wait()
        results[i] = gen.generate(prompts[i], max_new_tokens=12).texts[0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [results.get(i) for i in range(len(prompts))] == alone


def test_sampling_options_go_with_each_request(engine, tokenizer):
    gen = ConveyorGenerator(engine, tokenizer)
    hot = gen.generate("Hello", max_new_tokens=12, do_sample=True, temperature=1.5, top_k=0, top_p=1.0)
    greedy = gen.generate("Hello", max_new_tokens=12, do_sample=False)
    assert hot.stop_reasons == ["length"] and len(hot.sequences[0]) == len(greedy.sequences[0])
    near_greedy = gen.generate("Hello", max_new_tokens=12, do_sample=True, top_k=1)  # top-1 sampling is argmax
    assert near_greedy.texts == greedy.texts


# -- tools on: stop, leave the batch, settle, resume ----------------------------------
def test_a_tool_using_answer_equals_the_generate_engine(bigram_engine, bigram, tokenizer):
    asks = [FILLER + " alpha", FILLER + " beta"]
    with ConveyorGenerator(GenerateEngine(bigram), tokenizer, tools=[echo()], tool_prompt=False) as gen:
        reference = gen.generate(asks, max_new_tokens=40)
    # Not closed with the generator: an engine passed in is its owner's to close.
    out = ConveyorGenerator(bigram_engine, tokenizer, tools=[echo()], tool_prompt=False).generate(
        asks, max_new_tokens=40)
    assert reference.texts == [CALLING, " plain answer"]
    assert out.texts == reference.texts and torch.equal(out.sequences, reference.sequences)
    assert out.stop_reasons == ["eos", "eos"]
    assert [(r.row, r.index) for r in sorted(out.timeline.rounds, key=lambda r: (r.row, r.index))] == [
        (0, 0), (0, 1), (1, 0)]
    [call] = out.tool_calls
    assert call.units[0].output == "ECHO hi"


def test_a_conversation_waiting_for_a_tool_leaves_the_batch(bigram, tokenizer):
    entered, release = threading.Event(), threading.Event()

    def respond(line):
        entered.set()
        release.wait(60)
        return f"ECHO {line}"

    with ContinuousEngine(bigram, max_cache_tokens=2048, page_size=8) as eng:
        with ConveyorGenerator(eng, tokenizer, tools=[echo(respond=respond)], tool_prompt=False) as gen:
            done: dict = {}
            worker = threading.Thread(target=lambda: done.update(out=gen.generate(FILLER + " alpha",
                                                                                  max_new_tokens=40)))
            worker.start()
            assert entered.wait(60)
            # The call closed and the tool is still running: its request was cancelled.
            wait_until(lambda: eng.stats() == {"decoding": 0, "waiting": 0, "followed": 0},
                       "the waiting conversation's request left the batch")
            release.set()
            worker.join(60)
    assert done["out"].texts == [CALLING]


def test_the_resume_reuses_the_cached_prefix(bigram, tokenizer):
    forwarded = []

    def count(module, args, kwargs):
        # Prefill forwards only: how many one-token decode steps the batch runs before a
        # cancelled request leaves it depends on timing, the prefill does not.
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]
        if ids.shape[-1] > 1:
            forwarded.append(int(ids.shape[-1]))

    handle = bigram.register_forward_pre_hook(count, with_kwargs=True)
    totals, prompt_length = {}, len(tokenizer(FILLER + " alpha")["input_ids"])
    try:
        for sharing in (True, False):
            forwarded.clear()
            with ContinuousEngine(bigram, max_cache_tokens=2048, page_size=8, prefix_sharing=sharing) as eng:
                with ConveyorGenerator(eng, tokenizer, tools=[echo()], tool_prompt=False) as gen:
                    assert gen.generate(FILLER + " alpha", max_new_tokens=40).texts == [CALLING]
            totals[sharing] = sum(forwarded)
    finally:
        handle.remove()
    saved = totals[False] - totals[True]
    assert saved % 8 == 0 and saved >= prompt_length // 8 * 8  # at least the prompt's whole blocks


def test_cancel_stops_the_request_at_once(engine, tokenizer):
    cancel = threading.Event()

    def on_event(event):
        if event.kind == "text":
            cancel.set()

    gen = ConveyorGenerator(engine, tokenizer)
    out = gen.generate(["one", "two"], max_new_tokens=500, stream=on_event, cancel=cancel)
    assert out.stop_reasons == ["cancelled", "cancelled"]
    assert all(r.new_tokens < 500 for r in out.timeline.rounds)
    wait_until(lambda: engine.stats() == {"decoding": 0, "waiting": 0, "followed": 0},
               "the cancelled requests left the batch")
    assert gen.generate("Hello there, how", max_new_tokens=5).stop_reasons == ["length"]  # still serving


# -- what it refuses ------------------------------------------------------------------
@pytest.mark.parametrize("keyword, value", [("repetition_penalty", 1.3), ("num_beams", 2), ("min_new_tokens", 3),
                                            ("output_scores", True), ("seed", 1), ("stopping_criteria", [])])
def test_options_it_cannot_honour_are_refused_by_name(engine, tokenizer, keyword, value):
    gen = ConveyorGenerator(engine, tokenizer)
    with pytest.raises(ValueError, match=f"{keyword}.* cannot be used with the continuous batching engine"):
        gen.generate("Hi", max_new_tokens=2, **{keyword: value})


def test_replay_cache_and_oversized_prompts_are_refused(engine, tokenizer):
    from transformers import DynamicCache

    gen = ConveyorGenerator(engine, tokenizer)
    with pytest.raises(ValueError, match="replay= needs access to the logits"):
        gen.generate("Hi", replay=["x"], max_new_tokens=2)
    with pytest.raises(ValueError, match="cache= cannot be used"):
        gen.generate("Hi", cache=DynamicCache(), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"does not fit in the engine's cache of 4096 tokens.*max_cache_tokens"):
        gen.generate("Hi", max_new_tokens=5000)
    assert gen.generate("Hi", max_new_tokens=3).stop_reasons == ["length"]  # the manager is alive


def test_bad_arguments_and_use_after_close(tiny_model, tokenizer):
    with pytest.raises(TypeError, match="needs a transformers model with init_continuous_batching"):
        ContinuousEngine(object())
    with pytest.raises(ValueError, match="page_size=2 must be >= 4"):
        ContinuousEngine(tiny_model, page_size=2)
    before = set(threading.enumerate())
    eng = ContinuousEngine(tiny_model, max_cache_tokens=1024, page_size=8)
    gen = ConveyorGenerator(eng, tokenizer)
    assert gen.generate("Hi", max_new_tokens=3).stop_reasons == ["length"]
    started = set(threading.enumerate()) - before
    assert {t.name for t in started} >= {"conveyor-cb-router"} and all(t.daemon for t in started)
    eng.close()
    eng.close()  # idempotent
    assert not [t for t in started if t.is_alive()]  # the manager's thread and the router are gone
    with pytest.raises(ContinuousEngineError, match="was closed"):
        gen.generate("Hi", max_new_tokens=3)


# -- the default model ------------------------------------------------------------------
ASK = [{"role": "user", "content": "Use Python to compute the sum of the squares of the integers from 1 to 100, "
                                   "then tell me the result."}]


@pytest.mark.slow
def test_a_real_tool_using_answer_equals_the_generate_engine(default_model):
    from conveyor_hf.tools import PythonTool

    model, tok = default_model
    with ConveyorGenerator(model, tok, tools=[PythonTool()]) as gen:
        reference = gen.generate(ASK, max_new_tokens=90, do_sample=False)
    assert "```python" in reference.text and "```output" in reference.text  # a tool-using answer
    with ContinuousEngine(model) as eng, ConveyorGenerator(eng, tok, tools=[PythonTool()]) as gen:
        out = gen.generate(ASK, max_new_tokens=90, do_sample=False)
    assert out.text == reference.text and out.stop_reasons == reference.stop_reasons
    [call] = out.tool_calls
    first_round = min(out.timeline.rounds, key=lambda r: r.index)
    assert call.units[0].start < call.closed <= first_round.decode_end  # ran while the model decoded
    assert out.timeline.summary()["rounds"] == 2
