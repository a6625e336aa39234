"""JSON tool calls (<tool_call>{"name": …, "arguments": …}</tool_call>) through the loop."""

import pytest

from conveyor_hf.call_handlers import JsonCallHandler
from conveyor_hf.formats import primary_argument, tool_turn_suffix
from conveyor_hf.generator import ConveyorGenerator
from conveyor_hf.tools import PythonTool
from conveyor_hf.tools.scripted import ScriptedTool

ASK = [{"role": "user", "content": "look it up"}]


def lookup():
    return ScriptedTool("lookup", respond=lambda q: f"FOUND {q}")


def run(model, tok, script, tools=None, mode="partial"):
    # One call per round: decoding stops at each </tool_call> (the shape these tests check).
    with ConveyorGenerator(model, tok, tools=tools or [lookup()], mode=mode, parallel_tool_calls=False) as gen:
        return gen.generate(ASK, replay=[script], max_new_tokens=150)


def test_json_call_reaches_the_tool_and_returns_as_a_tool_turn(tiny_model, tokenizer):
    out = run(tiny_model, tokenizer,
              'Let me check.<tool_call>{"name": "lookup", "arguments": {"input": "Mariana Trench\\nK2"}}</tool_call>'
              "It is deep.")
    [call] = out.tool_calls
    assert call.tool == "lookup" and [u.output for u in call.units] == ["FOUND Mariana Trench", "FOUND K2"]
    assert "<|im_start|>tool\nFOUND Mariana Trench\nFOUND K2<|im_end|>\n<|im_start|>assistant\n" in out.text
    assert out.text.endswith("It is deep.")


@pytest.mark.parametrize("parallel", [False, True])
def test_content_shows_a_tool_turn_as_an_output_block(tiny_model, tokenizer, parallel):
    # The model reads the result through the template's tool role; a chat client is shown
    # it as an output block, never the template's special tokens, and so is the stream.
    shown: list[str] = []

    def on_event(event):
        if event.kind in ("text", "result"):
            shown.append(event.shown if event.kind == "result" else event.text)

    call = '<tool_call>{"name": "lookup", "arguments": {"input": "K2"}}</tool_call>'
    with ConveyorGenerator(tiny_model, tokenizer, tools=[lookup()], parallel_tool_calls=parallel) as gen:
        end_turn = "<|im_end|>" if parallel else ""  # parallel calls run when the turn ends
        out = gen.generate(ASK, replay=["Sure." + call + end_turn + "Done."], max_new_tokens=150, stream=on_event)
    assert "<|im_start|>tool\nFOUND K2<|im_end|>" in out.text
    assert out.content == "Sure." + call + "\n```output\nFOUND K2\n```\nDone."
    assert "".join(shown) == out.content
    assert [m["role"] for m in out.messages[0]] == ["assistant", "tool", "assistant"][: 3 if parallel else 1]
    assert all("<|im_" not in m["content"] for m in out.messages[0])


def test_modes_agree_on_json_calls(tiny_model, tokenizer):
    script = '<tool_call>{"name": "lookup", "arguments": {"input": "a"}}</tool_call>ok'
    partial = run(tiny_model, tokenizer, script, mode="partial")
    assert partial.text == run(tiny_model, tokenizer, script, mode="lazy").text


def test_unknown_tool_and_malformed_json_are_errors_for_the_model(tiny_model, tokenizer):
    out = run(tiny_model, tokenizer, '<tool_call>{"name": "nope", "arguments": {}}</tool_call>ok')
    assert "unknown tool 'nope'; available tools: lookup" in out.text
    out = run(tiny_model, tokenizer, '<tool_call>{"name": "lookup", "arguments": {"input": "a",,}}</tool_call>ok')
    assert "malformed tool call JSON" in out.text
    assert out.text.endswith("ok")  # the answer went on


def test_python_code_argument_still_runs_statement_by_statement(tiny_model, tokenizer):
    code = "x = 20\\nprint(x + 22)"
    call_text = f'<tool_call>{{"name": "python", "arguments": {{"code": "{code}"}}}}</tool_call>ok'
    out = run(tiny_model, tokenizer, call_text, tools=[PythonTool()])
    [call] = out.tool_calls
    assert [u.unit.text for u in call.units] == ["x = 20\n", "print(x + 22)\n"]
    assert "42" in out.text


def test_the_name_opens_the_tool_before_the_arguments_are_complete():
    opened = []

    def open_tool(name):
        tool = lookup()
        opened.append(name)
        return tool, tool.open_call()

    handler = JsonCallHandler(open_tool, ["lookup"])
    handler.feed('{"name": "lookup", "argu')
    assert opened == ["lookup"]
    handler.feed('ments": {"input": "x"}}')
    handler.close(True)
    assert handler.finish().output == "FOUND x"


def test_arguments_before_the_name_are_kept():
    def open_tool(name):
        tool = lookup()
        return tool, tool.open_call()

    handler = JsonCallHandler(open_tool, ["lookup"])
    handler.feed('{"arguments": {"input": "first"}, "name": "lookup"}')
    handler.close(True)
    assert handler.finish().output == "FOUND first"


def test_helpers(tokenizer):
    assert primary_argument(PythonTool) == "code"
    expected = "<|im_end|>\n<|im_start|>tool\nR<|im_end|>\n<|im_start|>assistant\n"
    assert tool_turn_suffix(tokenizer, "lookup", "R") == expected


@pytest.mark.slow
def test_real_model_json_search_call_is_reprompted_through_the_tool_role(default_model):
    from conveyor_hf.tools import SearchTool

    model, tok = default_model
    script = ('<tool_call>{"name": "search", "arguments": {"query": "Mariana Trench"}}</tool_call>'
              "The Mariana Trench is the deepest oceanic trench.")
    with ConveyorGenerator(model, tok, tools=[SearchTool(backend="offline")], parallel_tool_calls=False) as gen:
        out = gen.generate([{"role": "user", "content": "How deep is the Mariana Trench?"}], replay=[script],
                           max_new_tokens=120)
    [call] = out.tool_calls
    assert call.tool == "search" and not call.error
    assert "<|im_start|>tool\n[search: \"Mariana Trench\"]\n1. Mariana Trench" in out.text
    assert out.text.endswith("deepest oceanic trench.")
