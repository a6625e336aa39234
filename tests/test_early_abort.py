"""on_error="abort": a failing unit stops decoding of its call at once."""

from transformers import DynamicCache

from conveyor_hf import ConveyorGenerator
from conveyor_hf.tools import PythonTool
from gates import DecodeGate, Signals, unit_end_signals

ASK = [{"role": "user", "content": "run it"}]
FAILING_STATEMENT = "open('/nonexistent/input.csv').read()"
FAILING = (
    f"```python\nx = 1\n{FAILING_STATEMENT}\n"
    + "".join(f"value_{i} = x + {i}  # more work that depends on the file\n" for i in range(12))
    + "```\nThe file was missing, so I will check the path.\n"
    "```python\nprint(x, 'value_0' in globals())\n```\nDone."
)


def run(model, tok, on_error, **kw):
    with ConveyorGenerator(model, tok, tools=[PythonTool()], on_error=on_error) as gen:
        return gen.generate(ASK, replay=[FAILING], max_new_tokens=600, **kw)


def test_abort_cuts_the_call_short_and_the_model_continues(tiny_model, tokenizer):
    cache = DynamicCache(config=tiny_model.config)
    signals = Signals()
    # Decoding cannot go past the first statement after the failing one before that one has
    # failed (however slowly the kernel starts); the next token aborts the call.
    gate = DecodeGate(tokenizer, "value_0 = x", signals, f"ended {FAILING_STATEMENT}")
    aborted = run(tiny_model, tokenizer, "abort", past_key_values=cache, logits_processor=[gate],
                  stream=unit_end_signals(signals))
    assert not signals.missed
    full = run(tiny_model, tokenizer, "continue")
    first = aborted.tool_calls[0]
    assert "FileNotFoundError" in first.error and "stopped early" in first.error
    ran = [u.unit.text for u in first.units if not u.skipped]
    assert ran[:2] == ["x = 1\n", f"{FAILING_STATEMENT}\n"] and len(ran) == 2
    # Decoding of the call stopped long before the model finished writing it.
    assert len(first.units) < len(full.tool_calls[0].units)
    assert aborted.timeline.summary()["new_tokens"] < full.timeline.summary()["new_tokens"]
    # The call is closed in the text, the error re-prompted, and the answer goes on.
    assert "```\n```output\n" in aborted.text and aborted.text.endswith("Done.")
    # The kernel state is what ran: x exists, nothing after the failing statement does.
    assert "```output\n1 False\n```" in aborted.text
    # The KV cache matches the ids exactly (no orphan tokens).
    assert cache.get_seq_length() == aborted.sequences.shape[1] - 1


def test_continue_is_the_default_and_runs_nothing_after_the_error(tiny_model, tokenizer):
    out = run(tiny_model, tokenizer, "continue")
    first = out.tool_calls[0]
    assert "stopped early" not in (first.error or "")
    assert all(u.skipped for u in first.units[2:])  # a failed statement stops the cell
