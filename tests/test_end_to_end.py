"""The whole loop with real Jupyter kernels, on the tiny model and the real default model.

Answers are either decoded live (greedy) or replayed (a fixed text forced token by token
through the real forward pass), so the assertions are about behaviour, not luck.
"""

import pytest
import torch

from conveyor_hf import ConveyorGenerator
from conveyor_hf.tools import PythonTool

ASK = [{"role": "user", "content": "Use Python to compute 7 * 6 and print it."}]

TWO_ROUNDS = (
    "First:\n```python\nx = 6\ny = x * 7\nprint(y)\n```\n"
    "Then reuse it:\n```python\nprint(y + 1)\n```\nDone."
)

# Each statement sleeps (standing for I/O); a long comment line gives decoding work
# between statements, as real code interleaves slow calls with more code to write.
SLEEPY = "Running the steps:\n```python\nimport time\n" + "".join(
    f"time.sleep(0.5)  # step {i}: wait for the sensor to settle before reading the next value\n"
    for i in range(5)
) + "print('done')\n```\nAll steps ran."


def answer(model, tok, script, mode="partial", tool=None, **kw):
    tool = tool or PythonTool(timeout=kw.pop("timeout", 30))
    with ConveyorGenerator(model, tok, tools=[tool], mode=mode) as gen:
        return gen.generate(ASK, replay=[script], max_new_tokens=kw.pop("max_new_tokens", 400), **kw)


def test_kernel_state_persists_across_rounds_and_modes_agree(tiny_model, tokenizer):
    partial = answer(tiny_model, tokenizer, TWO_ROUNDS, "partial")
    lazy = answer(tiny_model, tokenizer, TWO_ROUNDS, "lazy")
    assert partial.text == lazy.text
    assert "```output\n42\n```" in partial.text and "```output\n43\n```" in partial.text
    assert [len(c.units) for c in partial.tool_calls] == [3, 1]


def test_batch_rows_get_their_own_kernels(tiny_model, tokenizer):
    scripts = ["```python\nx = 1\n```\nok", "```python\nprint(x)\n```\nok"]
    with ConveyorGenerator(tiny_model, tokenizer, tools=[PythonTool()]) as gen:
        out = gen.generate([ASK, ASK], replay=scripts, max_new_tokens=100)
    assert "NameError" in out.texts[1]  # row 1's kernel never saw row 0's x


@pytest.mark.parametrize(
    "code, expected",
    [
        ("while True:\n    pass\n", "timed out after 2s"),
        ("import os\nos._exit(1)\n", "kernel died"),
        ("1 / 0\nprint('never')\n", "ZeroDivisionError"),
        ("print('x' * 100000)\n", "characters cut"),
        ("def broken(:\n    pass\n", "SyntaxError"),
    ],
)
def test_hostile_code_gives_a_clear_tool_error_never_a_hang(tiny_model, tokenizer, code, expected):
    out = answer(tiny_model, tokenizer, f"```python\n{code}```\nafter", timeout=2)
    assert expected in out.text
    assert out.text.endswith("after")  # decoding went on after the error


def test_unclosed_fence_at_end_of_answer_runs_what_is_complete(tiny_model, tokenizer):
    out = answer(tiny_model, tokenizer, "```python\nprint('ran')\nz = (1 +")
    [call] = out.tool_calls
    assert "not closed" in call.error and "ran" in out.text and "SyntaxError" in out.text


@pytest.mark.slow
def test_real_model_greedy_without_tools_equals_model_generate(default_model):
    model, tok = default_model
    enc = tok.apply_chat_template(ASK, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    reference = model.generate(**enc, max_new_tokens=40, do_sample=False)
    out = ConveyorGenerator(model, tok).generate(enc["input_ids"], max_new_tokens=40, do_sample=False)
    assert torch.equal(out.sequences, reference)


@pytest.mark.slow
def test_real_model_live_answer_partial_equals_lazy(default_model):
    model, tok = default_model
    texts = []
    for mode in ("partial", "lazy"):
        with ConveyorGenerator(model, tok, tools=[PythonTool()], mode=mode) as gen:
            out = gen.generate(ASK, max_new_tokens=120, do_sample=False)
        texts.append(out.text)
        assert out.tool_calls, "the default model is expected to write a python block for this prompt"
    assert texts[0] == texts[1]
    assert "```output" in texts[0]


@pytest.mark.slow
def test_real_model_slow_statements_overlap_decoding(default_model):
    model, tok = default_model
    partial = answer(model, tok, SLEEPY, "partial").timeline.summary()
    lazy = answer(model, tok, SLEEPY, "lazy").timeline.summary()
    assert partial["units"] == lazy["units"] == 7
    # Lazy runs every statement after the block is decoded: all its tool time is exposed.
    assert lazy["exposed_tool"] >= 0.9 * lazy["tool"]
    # Partial runs each statement while the next line is decoded: only the tail is exposed.
    assert partial["exposed_tool"] < 0.35 * partial["tool"]
