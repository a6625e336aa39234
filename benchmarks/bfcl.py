"""BFCL building blocks: its data, its backends as function tools, replay text and checks.

The Berkeley Function Calling Leaderboard ships as the PyPI package ``bfcl-eval``, used
here only for its files (install it without its dependencies, like the other data
packages: ``pip install --no-deps bfcl-eval``). Three categories are used:

- ``parallel`` (one function, several calls in one turn) and ``parallel_multiple``
  (several functions, several calls): 200 entries each. BFCL checks these by their syntax
  (AST) only; the package ships **no executable functions** for them (its old
  ``exec_parallel*`` sets are kept under ``data/unused_datasets`` without the code).
  :class:`BfclEnvironment` therefore backs each documented function by a *recorder*: a
  function tool with the function's BFCL schema that records the call and returns a short
  acknowledgement. Labelled so wherever it is used.
- ``multi_turn_base``: 200 conversations of up to 7 user turns over the executable
  backends the package does ship (file system, math, messaging, posting, tickets,
  trading, travel, vehicle control). Each public method of a fresh backend instance
  (loaded with the entry's ``initial_config``) becomes a
  :class:`~conveyor_hf.tools.function.FunctionTool` made from the method itself
  (``get_json_schema`` of its signature and docstring).

Backends are instant (microseconds); ``latency=`` adds a labelled emulated latency to
every call (a sleep before it, as a remote API would take). Which calls may start
early is the side-effect class: ``MathAPI`` is ``pure``; the other backends are ``stateful``
(each call runs once, as soon as its arguments are all in, never in parallel with another
call of the same backend instance, which a per-instance lock enforces; running the calls
of one turn *in call order* is the tool loop's job); recorders are ``read_only``.

:func:`render_calls` writes ground-truth calls as a Hermes-style assistant turn, the
text the benchmark replays, and :func:`check` executes the ground truth on a fresh
environment and compares the calls, their results and the backend state (BFCL's own
``state_checker``) with what the replayed answer did.

    entry = load_entries("multi_turn_base", limit=1)[0]
    env = BfclEnvironment(entry)
    for turn in entry.ground_truth:
        for call in turn:
            env.run_tool(call)               # or: ConveyorGenerator(..., tools=env.tools) + replay
    assert check(entry, env).ok
"""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import inspect
import json
import re
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

from conveyor_hf.tools.base import SideEffect, ToolResult
from conveyor_hf.tools.function import FunctionTool, render_value

__all__ = [
    "CATEGORIES",
    "BfclCheck",
    "BfclEntry",
    "BfclEnvironment",
    "ExecutedCall",
    "GroundTruthCall",
    "bfcl_json_schema",
    "bfcl_data_dir",
    "check",
    "load_entries",
    "render_calls",
    "schema_problems",
]

#: The categories this module loads.
CATEGORIES = ("parallel", "parallel_multiple", "multi_turn_base")
#: The categories whose functions the package ships as code.
EXECUTABLE = ("multi_turn_base",)
#: Side-effect class per backend class; others get :data:`DEFAULT_BACKEND_SIDE_EFFECT`.
BACKEND_SIDE_EFFECTS = {"MathAPI": SideEffect.PURE}
DEFAULT_BACKEND_SIDE_EFFECT = SideEffect.STATEFUL
#: What a recorder (parallel categories) answers: BFCL has no code to run for them.
RECORDED = "recorded {name}: BFCL ships no executable function for this category"
INSTALL = "pip install --no-deps bfcl-eval"

_ABSENT = object()  # "leave this optional parameter out"
_STANDARD = re.compile(r"[ ,./\-_*^]")


# -- data ---------------------------------------------------------------------------------
class BfclUnavailable(RuntimeError):
    """``bfcl-eval`` is not installed; the message gives the install line."""


def _package_root() -> Path:
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise BfclUnavailable(f"the BFCL data package is not installed; run `{INSTALL}`")
    return Path(list(spec.submodule_search_locations)[0])


def bfcl_data_dir() -> Path:
    """The ``data`` folder of the installed ``bfcl-eval`` package."""
    return _package_root() / "data"


@dataclass(frozen=True)
class GroundTruthCall:
    """One ground-truth call: the function's name and its arguments by name."""

    name: str
    arguments: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments}


@dataclass
class BfclEntry:
    """One BFCL test entry.

    ``turns``: the user messages of each turn (parallel categories have one turn);
    ``functions``: the function docs the model is given, in BFCL's format;
    ``ground_truth``: the calls of each turn (for the parallel categories, one choice among
    the accepted answers: the first accepted value of each parameter, left out where BFCL
    accepts leaving it out); ``possible_answers``: BFCL's accepted values (parallel only);
    ``initial_config``, ``involved_classes``, ``excluded_functions``: the multi-turn backends.
    """

    id: str
    category: str
    turns: list[list[dict[str, Any]]]
    functions: list[dict[str, Any]]
    ground_truth: list[list[GroundTruthCall]]
    possible_answers: list[dict[str, dict[str, list[Any]]]] = field(default_factory=list)
    initial_config: dict[str, Any] = field(default_factory=dict)
    involved_classes: list[str] = field(default_factory=list)
    excluded_functions: list[str] = field(default_factory=list)

    @property
    def executable(self) -> bool:
        """True when BFCL ships the code behind the functions (multi-turn backends)."""
        return self.category in EXECUTABLE

    @property
    def calls(self) -> list[GroundTruthCall]:
        """Every ground-truth call, in order, over all turns."""
        return [call for turn in self.ground_truth for call in turn]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_entries(category: str, *, limit: int | None = None, ids: Iterable[str] | None = None) -> list[BfclEntry]:
    """The entries of ``category`` (one of :data:`CATEGORIES`), in file order.

    ``ids`` keeps only those entries; ``limit`` the first ``limit`` (after ``ids``).
    """
    if category not in CATEGORIES:
        raise ValueError(f"category {category!r} is not loaded here; use one of {', '.join(CATEGORIES)}")
    data = bfcl_data_dir()
    questions = _read_jsonl(data / f"BFCL_v4_{category}.json")
    answers = {a["id"]: a["ground_truth"] for a in _read_jsonl(data / "possible_answer" / f"BFCL_v4_{category}.json")}
    wanted = set(ids) if ids is not None else None
    entries = []
    for question in questions:
        if wanted is not None and question["id"] not in wanted:
            continue
        entries.append(_entry(category, question, answers[question["id"]]))
        if limit is not None and len(entries) >= limit:
            break
    return entries


def _entry(category: str, question: dict[str, Any], answer: list[Any]) -> BfclEntry:
    if category in EXECUTABLE:
        classes = list(question["involved_classes"])
        excluded = list(question.get("excluded_function", []))
        signatures = _method_signatures(classes)
        return BfclEntry(
            id=question["id"], category=category, turns=question["question"],
            functions=_multi_turn_docs(classes, excluded),
            ground_truth=[[_parse_call(text, signatures) for text in turn] for turn in answer],
            initial_config=question.get("initial_config", {}), involved_classes=classes,
            excluded_functions=excluded,
        )
    calls = []
    for item in answer:
        (name, options), = item.items()
        arguments = {}
        for param, accepted in options.items():
            value = _first_accepted(accepted)
            if value is not _ABSENT:
                arguments[param] = value
        calls.append(GroundTruthCall(name, arguments))
    return BfclEntry(id=question["id"], category=category, turns=question["question"],
                     functions=question["function"], ground_truth=[calls], possible_answers=answer)


def _first_accepted(accepted: list[Any]) -> Any:
    """The first accepted value ("" = may be left out), nested answers resolved the same way."""
    for option in accepted:
        if option != "":
            return _resolve(option)
    return _ABSENT


def _resolve(option: Any) -> Any:
    if isinstance(option, dict):  # a dict parameter: each key has its own accepted values
        out = {}
        for key, accepted in option.items():
            value = _first_accepted(accepted) if isinstance(accepted, list) else accepted
            if value is not _ABSENT:
                out[key] = value
        return out
    if isinstance(option, list):
        return [_resolve(item) for item in option]
    return option


# -- multi-turn backends ---------------------------------------------------------------------
@lru_cache(maxsize=None)
def _backend_class(class_name: str) -> type:
    from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING

    if class_name not in CLASS_FILE_PATH_MAPPING:
        raise ValueError(f"unknown BFCL backend {class_name!r}; known: {', '.join(CLASS_FILE_PATH_MAPPING)}")
    return getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[class_name]), class_name)


def _public_methods(cls: type) -> list[str]:
    return [name for name, _ in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")]


def _method_signatures(classes: Sequence[str]) -> dict[str, list[str]]:
    """Method name → its parameter names (without ``self``), over ``classes``."""
    signatures: dict[str, list[str]] = {}
    for class_name in classes:
        cls = _backend_class(class_name)
        for name in _public_methods(cls):
            params = list(inspect.signature(getattr(cls, name)).parameters)[1:]
            signatures[name] = params
    return signatures


def _multi_turn_docs(classes: Sequence[str], excluded: Sequence[str]) -> list[dict[str, Any]]:
    from bfcl_eval.constants.executable_backend_config import MULTI_TURN_FUNC_DOC_FILE_MAPPING

    docs = []
    for class_name in classes:
        path = bfcl_data_dir() / "multi_turn_func_doc" / MULTI_TURN_FUNC_DOC_FILE_MAPPING[class_name]
        docs += [doc for doc in _read_jsonl(path) if doc["name"] not in excluded]
    return docs


def _parse_call(text: str, signatures: dict[str, list[str]]) -> GroundTruthCall:
    """``"mv(source='a', destination='b')"`` → a call; literals only (``ast``, never ``eval``)."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"cannot read the BFCL ground-truth call {text!r}: {exc}") from exc
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"the BFCL ground-truth call {text!r} is not of the form name(arguments)")
    name = node.func.id
    if name not in signatures:
        raise ValueError(f"the BFCL ground-truth call {text!r} names no method of the entry's backends")
    params = signatures[name]
    if len(node.args) > len(params):
        raise ValueError(f"the BFCL ground-truth call {text!r} has more positional arguments than {params}")
    arguments = {params[i]: ast.literal_eval(arg) for i, arg in enumerate(node.args)}
    for keyword in node.keywords:
        arguments[keyword.arg] = ast.literal_eval(keyword.value)
    return GroundTruthCall(name, _plain(arguments))


def _plain(value: Any) -> Any:
    """The value as JSON carries it (tuples become lists), so calls compare as written."""
    return json.loads(json.dumps(value))


# -- schemas of BFCL function docs -----------------------------------------------------------
_BFCL_TYPES = {"dict": "object", "float": "number", "tuple": "array", "any": None}


def bfcl_json_schema(schema: Any) -> Any:
    """A BFCL parameter schema as JSON Schema: ``dict`` → ``object``, ``float`` → ``number``,
    ``tuple`` → ``array``, ``any`` → no type."""
    if isinstance(schema, list):
        return [bfcl_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            mapped = _BFCL_TYPES.get(value, value)
            if mapped is not None:
                out[key] = mapped
        elif key in ("properties", "$defs"):
            out[key] = {name: bfcl_json_schema(spec) for name, spec in value.items()}
        elif key in ("items", "additionalProperties", "prefixItems", "anyOf", "oneOf", "allOf"):
            out[key] = bfcl_json_schema(value)
        else:
            out[key] = value
    return out


# -- the environment ---------------------------------------------------------------------------
@dataclass
class ExecutedCall:
    """One run of a tool's function in a :class:`BfclEnvironment`.

    ``arguments`` are the ones the model wrote (schema defaults not filled in); ``output``
    the rendered result the model was shown (``None`` if the function raised, see
    ``error``). ``run`` is the tool call's action run: ``superseded`` when a pure function
    ran early and again with a late optional argument (only the last run counts).
    """

    name: str
    arguments: dict[str, Any]
    output: str | None
    error: str | None
    start: float
    end: float
    run: Any = None

    @property
    def superseded(self) -> bool:
        return self.run is not None and not self.run.final


class _BackendTool(FunctionTool):
    """A function tool that logs each run into its environment, with an optional
    emulated latency before it and a lock shared by the tools of one backend instance."""

    def __init__(self, fn: Any, *, log: list[ExecutedCall], lock: threading.Lock | None,
                 latency: float | None, **options: Any) -> None:
        super().__init__(fn, **options)
        self.emulated_latency = latency
        self._log = log
        self._backend_lock = lock

    def act(self, arguments: dict[str, Any]) -> str:
        run = self.current_run
        written = dict(run.arguments) if run is not None else dict(arguments)
        if self.emulated_latency:
            time.sleep(self.emulated_latency)  # the emulated network time, outside the lock
        start = time.perf_counter()
        try:
            if self._backend_lock is None:
                output = super().act(arguments)
            else:
                with self._backend_lock:
                    output = super().act(arguments)
        except Exception as exc:
            self._log.append(ExecutedCall(self.name, written, None, f"{type(exc).__name__}: {exc}",
                                          start, time.perf_counter(), run))
            raise
        self._log.append(ExecutedCall(self.name, written, output, None, start, time.perf_counter(), run))
        return output


class BfclEnvironment:
    """The tools of one BFCL entry, on fresh backends, and the log of what they ran.

    Args:
      entry: a :class:`BfclEntry`.
      latency: seconds of emulated latency before every call (None: the backends' own,
        microseconds). Reported by :attr:`latency_label`.
      side_effects: a side-effect class for every tool, or a mapping from backend class
        name (multi-turn) to one; default :data:`BACKEND_SIDE_EFFECTS`, else
        :data:`DEFAULT_BACKEND_SIDE_EFFECT`; recorders are ``read_only``.
    """

    def __init__(self, entry: BfclEntry, *, latency: float | None = None,
                 side_effects: SideEffect | str | dict[str, SideEffect | str] | None = None) -> None:
        if latency is not None and latency < 0:
            raise ValueError(f"latency={latency} must be >= 0 seconds (or None for none)")
        self.entry = entry
        self.latency = latency
        self.log: list[ExecutedCall] = []
        self.instances: dict[str, Any] = {}
        self._methods: dict[str, Any] = {}
        self.tools: list[FunctionTool] = []
        if entry.executable:
            self._load_backends(side_effects)
        else:
            self._load_recorders(side_effects)
        self._by_name = {tool.name: tool for tool in self.tools}

    @property
    def latency_label(self) -> str:
        """How call latency is made up, for reports."""
        kind = "executable BFCL backends" if self.entry.executable else (
            "recorders (BFCL ships no executable functions for this category)")
        if not self.latency:
            return f"{kind}; no emulated latency"
        return f"{kind}; emulated latency {self.latency:g} s per call (a sleep before each call)"

    def _side_effect(self, side_effects: Any, class_name: str | None) -> SideEffect | str:
        if isinstance(side_effects, (str, SideEffect)):
            return side_effects
        if class_name is None:
            return SideEffect.READ_ONLY
        if isinstance(side_effects, dict) and class_name in side_effects:
            return side_effects[class_name]
        return BACKEND_SIDE_EFFECTS.get(class_name, DEFAULT_BACKEND_SIDE_EFFECT)

    def _load_backends(self, side_effects: Any) -> None:
        from bfcl_eval.constants.executable_backend_config import STATELESS_CLASSES

        for class_name in self.entry.involved_classes:
            instance = _backend_class(class_name)()
            if class_name not in STATELESS_CLASSES:
                config = copy.deepcopy(self.entry.initial_config.get(class_name, {}))
                instance._load_scenario(config, long_context=False)
            self.instances[class_name] = instance
            lock = None if class_name in STATELESS_CLASSES else threading.Lock()
            effect = self._side_effect(side_effects, class_name)
            for name in _public_methods(type(instance)):
                if name in self.entry.excluded_functions:
                    continue
                if name in self._methods:
                    raise ValueError(f"{self.entry.id}: two backends both have a method {name!r}")
                method = getattr(instance, name)
                self._methods[name] = method
                self.tools.append(_BackendTool(method, log=self.log, lock=lock, latency=self.latency,
                                               side_effect=effect))

    def _load_recorders(self, side_effects: Any) -> None:
        effect = self._side_effect(side_effects, None)
        for doc in self.entry.functions:
            name = doc["name"]
            parameters = bfcl_json_schema(doc.get("parameters") or {"type": "object", "properties": {}})
            parameters["type"] = "object"
            self._methods[name] = _recorder(name)
            self.tools.append(_BackendTool(self._methods[name], log=self.log, lock=None, latency=self.latency,
                                           name=name, description=doc.get("description", ""),
                                           parameters=parameters, side_effect=effect))

    # -- using it ------------------------------------------------------------------------
    def tool(self, name: str) -> FunctionTool:
        """The tool named ``name``."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"{self.entry.id} has no tool {name!r}; it has {', '.join(self._by_name)}") from None

    def run_tool(self, call: GroundTruthCall) -> ToolResult:
        """Run ``call`` through its function tool (validation included), one shot."""
        return self.tool(call.name).run(json.dumps(call.arguments))

    def execute(self, call: GroundTruthCall) -> Any:
        """Run ``call`` on the backend directly (no tool, no log): the reference path."""
        if call.name not in self._methods:
            raise KeyError(f"{self.entry.id} has no function {call.name!r}")
        return self._methods[call.name](**call.arguments)

    @property
    def calls(self) -> list[ExecutedCall]:
        """The runs that count: every logged run except superseded early ones."""
        return [c for c in self.log if not c.superseded]

    def state(self) -> dict[str, dict[str, Any]]:
        """Each backend's public attributes (what BFCL's state check compares)."""
        return {name: {k: v for k, v in vars(obj).items() if not k.startswith("_")}
                for name, obj in self.instances.items()}

    def close(self) -> None:
        """Nothing to release (backends are in-process objects); kept for symmetry with tools."""

    def __enter__(self) -> "BfclEnvironment":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _recorder(name: str) -> Any:
    def record(**arguments: Any) -> str:
        return RECORDED.format(name=name)

    record.__name__ = name
    return record


def schema_problems(entry: BfclEntry) -> list[str]:
    """Where the entry's ground truth breaks its own function schemas (as the tools check
    them), e.g. a string id for an ``int`` parameter. A validating tool rejects such a
    call, so a benchmark that replays the ground truth leaves these entries out."""
    env = BfclEnvironment(entry)
    problems = []
    for call in entry.calls:
        try:
            found = env.tool(call.name).check_arguments(call.arguments)
        except KeyError as exc:
            found = [str(exc)]
        problems += [f"{call.name}: {problem}" for problem in found]
    return problems


# -- replay text --------------------------------------------------------------------------------
def render_calls(calls: Sequence[GroundTruthCall]) -> str:
    """The calls as one Hermes-style assistant turn: a ``<tool_call>`` block per call,
    ``{"name": ..., "arguments": {...}}`` inside, as Qwen/Hermes chat templates write them."""
    return "\n".join(
        f"<tool_call>\n{json.dumps(call.to_json(), ensure_ascii=False)}\n</tool_call>" for call in calls
    )


# -- checking ---------------------------------------------------------------------------------
@dataclass
class BfclCheck:
    """The outcome of :func:`check`: ``ok`` and, if not, every problem found."""

    ok: bool
    problems: list[str] = field(default_factory=list)


def check(entry: BfclEntry, env: BfclEnvironment) -> BfclCheck:
    """Did ``env`` execute the ground truth of ``entry``?

    Multi-turn: the ground truth is executed directly on a fresh environment; the calls
    that ran in ``env`` must be the same calls (as a multiset: the tool loop may run
    ``pure`` calls in parallel), each with the same result, and every backend must end in
    the same state (BFCL's ``state_checker``). Parallel categories: the recorded calls must
    match BFCL's accepted answers one to one, in any order (BFCL's rules: strings compared
    without case, spaces and ``,./-_*^``; "" lets a parameter be left out).
    """
    problems = _check_executable(entry, env) if entry.executable else _check_recorded(entry, env)
    return BfclCheck(not problems, problems)


def _args(arguments: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in arguments.items())


def _check_executable(entry: BfclEntry, env: BfclEnvironment) -> list[str]:
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import state_checker

    reference = BfclEnvironment(entry)
    unmatched = [(call, _outcome(reference, call)) for call in entry.calls]
    problems = []
    for done in env.calls:
        outcome = done.output if done.error is None else f"raised {done.error}"
        found = next((i for i, (call, expected) in enumerate(unmatched) if call.name == done.name
                      and _plain(call.arguments) == _plain(done.arguments) and expected == outcome), None)
        if found is None:
            problems.append(f"unexpected call {done.name}({_args(done.arguments)}) -> {outcome!r}")
        else:
            unmatched.pop(found)
    problems += [f"ground-truth call {call.name}({_args(call.arguments)}) -> {expected!r} did not run"
                 for call, expected in unmatched]
    verdict = state_checker(env.instances, reference.instances)
    if not verdict["valid"]:
        problems.append(f"{verdict['error_message']} differences: {verdict['details']['differences']}")
    return problems


def _outcome(reference: BfclEnvironment, call: GroundTruthCall) -> str:
    """What the call gives on the reference backends, rendered as the model is shown it."""
    try:
        return render_value(reference.execute(call))
    except Exception as exc:  # a ground-truth call may fail on purpose; it must fail alike
        return f"raised {type(exc).__name__}: {exc}"


def _check_recorded(entry: BfclEntry, env: BfclEnvironment) -> list[str]:
    done = env.calls
    answers = entry.possible_answers
    if len(done) != len(answers):
        return [f"{len(done)} calls ran, the ground truth has {len(answers)}: "
                + "; ".join(f"{c.name}({_args(c.arguments)})" for c in done)]
    if _match_all(done, answers, set()):
        return []
    return ["the calls that ran do not match BFCL's accepted answers one to one: "
            + "; ".join(f"{c.name}({_args(c.arguments)})" for c in done)]


def _match_all(done: list[ExecutedCall], answers: list[dict[str, Any]], used: set[int]) -> bool:
    if not done:
        return True
    first, rest = done[0], done[1:]
    for index, answer in enumerate(answers):
        if index not in used and _call_accepted(first, answer):
            if _match_all(rest, answers, used | {index}):
                return True
    return False


def _call_accepted(done: ExecutedCall, answer: dict[str, dict[str, list[Any]]]) -> bool:
    (name, options), = answer.items()
    if done.name != name or any(key not in options for key in done.arguments):
        return False
    return all(_accepts(done.arguments[key], accepted) if key in done.arguments else "" in accepted
               for key, accepted in options.items())


def _standard(text: str) -> str:
    return _STANDARD.sub("", text).lower().replace("'", '"')


def _accepts(value: Any, accepted: list[Any]) -> bool:
    return any(option != "" and _matches(value, option) for option in accepted)


def _matches(value: Any, option: Any) -> bool:
    if isinstance(option, str):
        return isinstance(value, str) and _standard(value) == _standard(option)
    if isinstance(option, dict):  # each key: its own accepted values
        if not isinstance(value, dict) or any(key not in option for key in value):
            return False
        return all(_accepts(value[key], accepted) if key in value else "" in accepted
                   for key, accepted in option.items())
    if isinstance(option, list):
        return (isinstance(value, list) and len(value) == len(option)
                and all(_matches(v, o) for v, o in zip(value, option)))
    if isinstance(option, bool) or isinstance(value, bool):
        return type(value) is type(option) and value == option
    return isinstance(value, (int, float)) and value == option
