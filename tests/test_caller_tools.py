"""Tools the caller runs: a call of a function schema ends the answer with ``tool_calls``,
while the tools conveyor_hf runs keep running in the same answer."""

import pytest

from conveyor_hf.generator import ConveyorGenerator
from conveyor_hf.outputs import StreamEvent
from conveyor_hf.tools.caller import CallerTool
from conveyor_hf.tools.scripted import ScriptedTool

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK = [{"role": "user", "content": "weather in Paris?"}]
WEATHER_CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
LOOKUP_CALL = '<tool_call>{"name": "lookup", "arguments": {"input": "paris"}}</tool_call>'


def run(model, tok, tools, turn, *, parallel=True, stream=None, messages=ASK, **kw):
    with ConveyorGenerator(model, tok, tools=tools, parallel_tool_calls=parallel, **kw) as gen:
        return gen.generate(messages, replay=[turn], max_new_tokens=160, stream=stream)


@pytest.mark.parametrize("mode", ["partial", "lazy"])
def test_a_call_of_a_caller_tool_ends_the_answer_with_the_call(tiny_model, tokenizer, mode):
    out = run(tiny_model, tokenizer, [WEATHER], "Let me check. " + WEATHER_CALL + "<|im_end|>", mode=mode)
    assert out.stop_reasons == ["tool_calls"]
    [call] = out.caller_calls[0]
    assert (call.name, call.arguments) == ("get_weather", {"city": "Paris"})
    assert call.id.startswith("call_")
    assert out.content == "Let me check. "  # the call's markup is not content
    assert WEATHER_CALL in out.text  # the model's text is kept whole
    assert out.messages[0] == [{"role": "assistant", "content": "Let me check. ",
                                "tool_calls": [call.as_message_call()]}]
    assert out.tool_calls == []  # nothing ran here
    assert call.as_openai()["function"]["arguments"] == '{"city": "Paris"}'


def test_own_tools_run_in_the_same_turn_and_their_results_stay_in_the_content(tiny_model, tokenizer):
    lookup = ScriptedTool("lookup", respond=lambda q: f"FOUND {q}")
    turn = LOOKUP_CALL + "\n" + WEATHER_CALL + "<|im_end|>"
    out = run(tiny_model, tokenizer, [lookup, WEATHER], turn)
    assert out.stop_reasons == ["tool_calls"]
    assert [c.tool for c in out.tool_calls] == ["lookup"]
    assert [c.name for c in out.caller_calls[0]] == ["get_weather"]
    assert out.content.startswith(LOOKUP_CALL)
    assert "```output\nFOUND paris\n```" in out.content and "get_weather" not in out.content


def test_without_parallel_calls_decoding_stops_at_the_caller_call(tiny_model, tokenizer):
    out = run(tiny_model, tokenizer, [WEATHER], WEATHER_CALL + " and more text<|im_end|>", parallel=False)
    assert out.stop_reasons == ["tool_calls"]
    assert out.text == WEATHER_CALL and out.content == ""


def test_the_stream_never_shows_a_caller_call(tiny_model, tokenizer):
    lookup = ScriptedTool("lookup", respond=lambda q: f"FOUND {q}")
    shown: list[str] = []

    def on_event(event: StreamEvent) -> None:
        if event.kind in ("text", "result"):
            shown.append(event.shown if event.kind == "result" else event.text)

    turn = "A " + LOOKUP_CALL + " B " + WEATHER_CALL + " C<|im_end|>"
    out = run(tiny_model, tokenizer, [lookup, WEATHER], turn, stream=on_event)
    assert "".join(shown) == out.content
    assert "get_weather" not in out.content and LOOKUP_CALL in out.content


def test_arguments_that_break_the_schema_go_back_to_the_model(tiny_model, tokenizer):
    bad = '<tool_call>{"name": "get_weather", "arguments": {"town": "Paris"}}</tool_call>'
    out = run(tiny_model, tokenizer, [WEATHER], bad + "<|im_end|>Sorry.", parallel=False, max_tool_rounds=1)
    assert out.stop_reasons != ["tool_calls"] and out.caller_calls == [[]]
    assert "'city' is a required property" in out.text


def test_the_result_sent_back_is_rendered_for_the_next_turn(tiny_model, tokenizer):
    first = run(tiny_model, tokenizer, [WEATHER], WEATHER_CALL + "<|im_end|>")
    [call] = first.caller_calls[0]
    history = ASK + first.messages[0] + [{"role": "tool", "tool_call_id": call.id, "content": "18 C"}]
    with ConveyorGenerator(tiny_model, tokenizer, tools=[WEATHER]) as gen:
        [prompt], _ = gen.render_prompts(history)
    # The default template renders only content: the call is written back as the model wrote it.
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' in prompt
    assert "18 C" in prompt and "get_weather: The weather in a city." in prompt


def test_bad_schemas_are_refused_by_name(tiny_model, tokenizer):
    with pytest.raises(ValueError, match="non-empty string 'name'"):
        ConveyorGenerator(tiny_model, tokenizer, tools=[{"type": "function", "function": {}}])
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        CallerTool.from_schema({"type": "function", "function": {"name": "f", "parameters": {"type": 3}}})
    with pytest.raises(ValueError, match="only 'function' tools"):
        CallerTool.from_schema({"type": "retrieval"})
    with pytest.raises(ValueError, match="json_calls=False"):
        ConveyorGenerator(tiny_model, tokenizer, tools=[WEATHER], json_calls=False)
    with pytest.raises(TypeError, match="function schema dicts"):
        ConveyorGenerator(tiny_model, tokenizer, tools=[len])
