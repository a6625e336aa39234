"""CalculatorTool: sympy's exact values for ordinary arithmetic, and hostile input refused
statically or stopped by the child's time and memory limits, with the tool alive after."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor_hf.tools import calc_policy
from conveyor_hf.tools.base import SideEffect
from conveyor_hf.tools.calc_policy import CalcError, Limits, validate
from conveyor_hf.tools.calc_sympy import evaluate
from conveyor_hf.tools.calculator import BOOT, PACKAGE_DIR, CalculatorTool
from parsers.lines import LineParser
from parsers.unit import Unit


@pytest.fixture(scope="module")
def calc() -> CalculatorTool:
    tool = CalculatorTool()
    tool.warm_up()
    yield tool
    tool.close()


def _ok(tool: CalculatorTool, expression: str) -> str:
    result = tool.run(expression)
    assert result.error is None, result.error
    return result.output


# -- ordinary arithmetic ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "expression, value",
    [
        ("2+3*4", sympy.Integer(2) + 3 * 4),
        ("sqrt(2)**2", sympy.sqrt(2) ** 2),
        ("log(E)", sympy.log(sympy.E)),
        ("factorial(10)", sympy.factorial(10)),
        ("sin(pi/6)", sympy.sin(sympy.pi / 6)),
        ("1/3 + 1/6", sympy.Rational(1, 3) + sympy.Rational(1, 6)),
        ("sqrt(8)", sympy.sqrt(8)),
        ("2**100", sympy.Integer(2) ** 100),
        ("log(8, 2)", sympy.log(8, 2)),
        ("atan2(1, 1)", sympy.atan2(1, 1)),
        ("7 // 2", sympy.Integer(3)),
        ("-7 % 3", sympy.Mod(-7, 3)),
        ("binomial(10, 3)", sympy.binomial(10, 3)),
        ("gcd(12, 18, 27)", sympy.Integer(3)),
        ("E**(I*pi)", sympy.exp(sympy.I * sympy.pi)),
        ("cos(pi)", sympy.cos(sympy.pi)),
    ],
)
def test_values_are_sympys(calc, expression, value):
    output = _ok(calc, expression)
    assert output.startswith(f"{expression} = {value}")


def test_exact_and_numeric_forms(calc):
    assert _ok(calc, "sqrt(8)") == "sqrt(8) = 2*sqrt(2) \u2248 2.82842712474619"
    assert _ok(calc, "1/3 + 1/6") == "1/3 + 1/6 = 1/2 \u2248 0.5"
    assert _ok(calc, "2+3*4") == "2+3*4 = 14"
    assert _ok(calc, "0.1 + 0.2") == "0.1 + 0.2 = 0.3"
    assert _ok(calc, "cbrt(-8)") == "cbrt(-8) = -2"
    assert _ok(calc, "round(pi, 3)") == "round(pi, 3) = 3.142"
    assert _ok(calc, "2 \u00d7 3 \u2212 1 =") == "2 * 3 - 1 = 5"


def test_big_results_stay_small(calc):
    output = _ok(calc, "factorial(20000)")
    assert "77338 digits" in output and "\u2248 1.8192063202303" in output
    assert len(output) <= calc.limits.max_output_chars
    assert len(_ok(calc, "2**1000")) < calc.limits.max_output_chars  # 302 digits, exact
    assert len(_ok(calc, "sin(10**4000)")) <= calc.limits.max_output_chars


def test_run_handles_one_expression_per_line(calc):
    result = calc.run("2**10\nsqrt(16)\n\n1/0\n")
    assert [r.unit.value for r in result.units] == ["2**10", "sqrt(16)", "1/0"]
    assert result.output.splitlines()[:2] == ["2**10 = 1024", "sqrt(16) = 4"]
    assert result.error and "division by zero" in result.error


@pytest.mark.parametrize(
    "expression, message",
    [
        ("1/0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("log(0)", "undefined or infinite"),
        ("0**-1", "undefined or infinite"),
    ],
)
def test_undefined_values_are_errors(calc, expression, message):
    result = calc.run(expression)
    assert result.error and message in result.error and expression in result.error


def test_tool_declares_itself(calc):
    assert calc.name == "calculator" and calc.side_effect is SideEffect.PURE
    assert calc.parameters["required"] == ["expression"]
    assert calc.parameters["properties"]["expression"]["type"] == "string"
    assert calc.schema()["function"]["name"] == "calculator"
    assert isinstance(calc.make_parser(), LineParser)


def test_argument_units(calc):
    assert calc.execute(Unit(text="", key="expression", value="2**10")).output == "2**10 = 1024"
    assert calc.execute(Unit(text="", key="expression", value=42)).output == "42 = 42"
    wrong = calc.execute(Unit(text="", key="expr", value="1+1"))
    assert wrong.error and "'expr'" in wrong.error and "'expression'" in wrong.error
    typed = calc.execute(Unit(text="", key="expression", value=["1"]))
    assert typed.error and "string" in typed.error


# -- hostile input --------------------------------------------------------------------------
HOSTILE = [
    "().__class__",
    "().__class__.__bases__[0].__subclasses__()",
    "__import__('os').system('echo pwned')",
    "__builtins__",
    "open('x')",
    "exec('1')",
    "eval('1+1')",
    "globals()",
    "getattr(1, 'real')",
    "sympy.sqrt(2)",
    "sqrt.__doc__",
    "lambda: 1",
    "(lambda x: x)(1)",
    "[x for x in range(10)]",
    "{1: 2}",
    "'a' * 10",
    "f'{1+1}'",
    "b'x'",
    "9**9**9",
    "10**10**10",
    "(10**5000)**(10**5000)",
    "2**-(10**9)",
    "factorial(10**9)",
    "factorial(factorial(20))",
    "binomial(10**9, 10**8)",
    "(" * 500 + "1" + ")" * 500,
    "-(" * 300 + "1" + ")" * 300,
    "sqrt(" * 60 + "2" + ")" * 60,
    "1+" * 2000 + "1",
    "+".join(["1"] * 400),
    "x + 1",
    "sqrt(x=4)",
    "sqrt(*[4])",
    "import os",
    "(a := 5)",
    "1 if 1 else 2",
    "2 < 3",
    "1 and 2",
    "True + 1",
    "None",
    "1e400",
    "3j",
    "2 ^ 3",
    "~1",
    "sin",
    "1\x00+1",
    "max(1, 2, key=abs)",
    "",
]


@pytest.mark.parametrize("expression", HOSTILE, ids=lambda e: repr(e[:40]))
def test_hostile_input_is_refused_and_the_tool_lives(calc, expression):
    result = calc.execute(Unit(text=expression, value=expression))
    assert result.error, expression
    assert result.output == ""
    assert _ok(calc, "1+1") == "1+1 = 2"


def test_there_are_many_hostile_cases():
    assert len(HOSTILE) >= 25


@pytest.mark.parametrize(
    "expression, named",
    [
        ("().__class__", "attribute access"),
        ("__import__('os')", "'__import__'"),
        ("x + 1", "unknown name 'x'"),
        ("foo(1)", "unknown function 'foo'"),
        ("sqrt(x=4)", "keyword arguments"),
        ("'a' * 10", "strings"),
        ("[1, 2]", "lists"),
        ("1,000", "write 1000"),
        ("lambda: 1", "lambda"),
        ("[x for x in y]", "comprehensions"),
        ("f'{1}'", "f-strings"),
        ("2 ^ 3", "write ** for powers"),
        ("9**9**9", "digits"),
        ("factorial(10**9)", "factorial(1000000000) is too large"),
        ("log(1, 2, 3)", "log() takes 1 to 2 argument(s), got 3"),
        ("1+" * 2000 + "1", "characters long"),
        ("-(" * 60 + "1" + ")" * 60, "nested more than"),
        ("2 +", "cannot parse"),
    ],
)
def test_refusals_name_the_construct(expression, named):
    with pytest.raises(CalcError) as info:
        validate(calc_policy.normalize(expression))
    assert named in str(info.value)


def test_long_flat_sums_are_fine(calc):
    terms = " + ".join(str(n) for n in range(1, 101))
    assert _ok(calc, terms).endswith("= 5050")


def test_node_count_limit():
    with pytest.raises(CalcError, match="more than 50 parts"):
        validate("+".join(["1"] * 30), Limits(max_nodes=50))
    assert validate("+".join(["1"] * 20), Limits(max_nodes=50))


def test_a_slow_evaluation_is_killed_and_the_worker_restarted():
    with CalculatorTool(time_limit=0.5) as tool:
        assert _ok(tool, "2+2") == "2+2 = 4"
        starts = tool.worker.starts
        result = tool.run("exp(exp(exp(100)))")  # passes the static checks, takes long
        assert result.error and "longer than 0.5s" in result.error
        assert tool.worker.starts == starts + 1
        assert _ok(tool, "3*3") == "3*3 = 9"


def test_the_memory_limit_stops_a_huge_result():
    relaxed = Limits(max_digits=10**12, max_exponent=10**12)
    # A generous time limit, so that the memory limit is what stops it (~1 s here).
    with CalculatorTool(memory_limit=256 << 20, time_limit=20, limits=relaxed) as tool:
        result = tool.run("2**(10**10)")  # ~1.2 GB as an integer
        assert result.error and "memory" in result.error
        assert _ok(tool, "2**10") == "2**10 = 1024"


def test_a_crashed_worker_is_replaced(calc):
    calc.worker._proc.kill()
    calc.worker._proc.wait()
    result = calc.run("1+2")  # the write or the read fails: an error, not a hang
    if result.error is not None:
        assert "worker" in result.error or "crashed" in result.error
    assert _ok(calc, "2+3") == "2+3 = 5"


def test_close_stops_the_worker():
    tool = CalculatorTool()
    assert _ok(tool, "1+1") == "1+1 = 2"
    process = tool.worker._proc
    tool.close()
    tool.close()  # idempotent
    assert process.poll() is not None
    assert _ok(tool, "2+2") == "2+2 = 4"  # a closed tool restarts on demand
    tool.close()


def test_the_child_imports_only_the_calculator_modules():
    """No package ``__init__`` runs in the child: of this project it holds what the calculator needs."""
    listing = (
        "import json\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('conveyor_hf', 'parsers'))))\n"
    )
    assert BOOT.endswith("main()\n")
    done = subprocess.run([sys.executable, "-c", BOOT.replace("main()\n", listing), str(PACKAGE_DIR)],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert json.loads(done.stdout) == [
        "conveyor_hf", "conveyor_hf.text", "conveyor_hf.tools", "conveyor_hf.tools.calc_policy",
        "conveyor_hf.tools.calc_sympy", "conveyor_hf.tools.calc_worker",
    ], done.stderr


# -- no eval anywhere, and validation never crashes ----------------------------------------
@pytest.mark.parametrize("module", ["calc_policy.py", "calc_sympy.py", "calc_worker.py", "calculator.py"])
def test_no_dynamic_evaluation_of_text(module):
    source = (Path(calc_policy.__file__).parent / module).read_text()
    banned_names = {"eval", "exec", "compile", "sympify", "parse_expr", "__import__"}
    banned_attributes = {"eval", "exec", "sympify", "parse_expr", "S"}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                assert func.id not in banned_names, f"{module}:{node.lineno} calls {func.id}"
            if isinstance(func, ast.Attribute):
                assert func.attr not in banned_attributes, f"{module}:{node.lineno} {func.attr}"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789+-*/%().,^ epiIsqrtlogx_'\"[]:=")),
               max_size=40))
def test_validation_only_ever_raises_calc_error(text):
    try:
        validate(text)
    except CalcError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=30))
def test_validation_handles_any_unicode(text):
    try:
        validate(text)
    except CalcError:
        pass


def test_in_process_evaluate_matches_the_tool(calc):
    assert evaluate("sqrt(8)") == _ok(calc, "sqrt(8)")
    with pytest.raises(CalcError, match="digits"):
        evaluate("10**10**10")  # refused statically, never computed
