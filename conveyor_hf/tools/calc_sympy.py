"""The calculator's evaluation: a validated expression tree built into sympy objects and formatted.

:func:`build` turns a tree that :func:`~conveyor_hf.tools.calc_policy.validate` accepted
into sympy objects node by node (no ``eval``, no ``sympify``); :func:`format_value` writes
``text = exact ≈ numeric`` within the output limit; :func:`evaluate` does all three steps
for one expression. This runs in the calculator's child process (:mod:`conveyor_hf.tools.
calc_worker`), under its time and memory limits; only the standard library and sympy are
imported, sympy lazily.
"""

from __future__ import annotations

import ast
import math
import re
from typing import Any

from conveyor_hf.text import shorten
from conveyor_hf.tools.calc_policy import CalcError, Limits, normalize, validate

__all__ = ["build", "evaluate", "format_value"]


def _functions() -> dict[str, Any]:
    import sympy

    def log(x: Any, base: Any = None) -> Any:
        return sympy.log(x) if base is None else sympy.log(x, base)

    def round_(x: Any, digits: Any = None) -> Any:
        if not x.is_number or not x.is_real:
            raise CalcError(f"round() needs a real number, got {x}")
        return x.round() if digits is None else x.round(int(digits))

    def cbrt(x: Any) -> Any:  # the real cube root for real x: cbrt(-8) = -2
        return sympy.real_root(x, 3) if x.is_real else sympy.cbrt(x)

    def many(f: Any) -> Any:
        def apply(*args: Any) -> Any:
            result = args[0]
            for arg in args[1:]:
                result = f(result, arg)
            return result

        return apply

    return {
        "sqrt": sympy.sqrt, "cbrt": cbrt, "root": sympy.root, "exp": sympy.exp,
        "log": log, "ln": sympy.log, "log10": lambda x: sympy.log(x, 10),
        "log2": lambda x: sympy.log(x, 2),
        "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "asin": sympy.asin,
        "acos": sympy.acos, "atan": sympy.atan, "atan2": sympy.atan2, "sinh": sympy.sinh,
        "cosh": sympy.cosh, "tanh": sympy.tanh, "abs": sympy.Abs, "floor": sympy.floor,
        "ceiling": sympy.ceiling, "ceil": sympy.ceiling, "round": round_,
        "factorial": sympy.factorial, "binomial": sympy.binomial,
        "gcd": many(sympy.gcd), "lcm": many(sympy.lcm), "min": sympy.Min, "max": sympy.Max,
    }


def build(tree: ast.Expression) -> Any:
    """The sympy value of a tree that :func:`validate` accepted (no eval, no sympify)."""
    import sympy

    constants = {"pi": sympy.pi, "E": sympy.E, "e": sympy.E, "I": sympy.I}
    functions = _functions()

    def visit(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, int):
                return sympy.Integer(node.value)
            return sympy.Float(node.value)
        if isinstance(node, ast.Name):
            return constants[node.id]
        if isinstance(node, ast.UnaryOp):
            value = visit(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp):
            left, right = visit(node.left), visit(node.right)
            op = node.op
            if isinstance(op, ast.Add):
                return left + right
            if isinstance(op, ast.Sub):
                return left - right
            if isinstance(op, ast.Mult):
                return left * right
            if isinstance(op, (ast.Div, ast.FloorDiv, ast.Mod)) and right.is_zero:
                raise CalcError("division by zero; check the divisor")
            if isinstance(op, ast.Div):
                return left / right
            if isinstance(op, ast.Pow):
                return left**right
            if isinstance(op, ast.FloorDiv):
                return sympy.floor(left / right)
            return sympy.Mod(left, right)
        if isinstance(node, ast.Call):
            name = node.func.id  # type: ignore[attr-defined]
            return functions[name](*[visit(arg) for arg in node.args])
        raise CalcError(f"internal: unexpected {type(node).__name__}")  # validate() forbids it

    return visit(tree.body)


_FLOAT = re.compile(r"(\d+\.\d*?)0+(?=$|[^\d])")


def _tidy(number: str) -> str:
    """``0.500000000000000`` -> ``0.5``; ``2.00000000000000`` -> ``2.0``."""
    return _FLOAT.sub(lambda m: m.group(1) + ("0" if m.group(1).endswith(".") else ""), number)


def _integer_text(value: int, room: int, limits: Limits) -> tuple[str, str | None]:
    """Exact digits when they fit in ``room`` characters, else the digit count and ≈."""
    if value.bit_length() * 0.30103 < min(room, 4000):
        return str(value), None
    import sympy

    digits = int(value.bit_length() * math.log10(2))
    while 10**digits <= abs(value):
        digits += 1
    while digits > 1 and 10 ** (digits - 1) > abs(value):
        digits -= 1
    approx = _tidy(str(sympy.Integer(value).evalf(limits.digits)))
    return f"an integer with {digits} digits", approx


def format_value(text: str, value: Any, limits: Limits = Limits()) -> str:
    """``text = exact ≈ numeric`` (the numeric part only when it says something new).

    The echoed expression is cut first, so the value keeps the room it needs; the whole
    line stays within ``limits.max_output_chars``.
    """
    import sympy

    if value.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        raise CalcError(
            f"{shorten(text, 60)!r} is undefined or infinite; check for a division by zero or a "
            "function outside its domain (log(0), ...)"
        )
    echo = shorten(text, min(120, limits.max_output_chars // 3))
    room = max(20, limits.max_output_chars - len(echo) - 3)
    if isinstance(value, sympy.Integer):
        exact, approx = _integer_text(int(value), room, limits)
    else:
        try:
            exact = _tidy(str(value)) if isinstance(value, sympy.Float) else str(value)
        except ValueError:  # Python refuses to print an integer of > 4300 digits
            exact = "(too long to print exactly)"
        approx = None
        if not isinstance(value, sympy.Float):
            numeric = value.evalf(limits.digits)
            if numeric.is_number:
                approx = _tidy(str(numeric))
        if approx is not None and len(exact) + len(approx) + 3 > room:
            exact = shorten(exact, max(10, room - len(approx) - 3))
    line = f"{echo} = {exact}"
    if approx is not None and re.sub(r"\.0(?![\d])", "", approx) != exact:
        line += f" \u2248 {approx}"
    return shorten(line, limits.max_output_chars)


def evaluate(text: str, limits: Limits = Limits()) -> str:
    """Validate, build and format one expression (in-process; the tool calls this in its
    child). Raises :class:`CalcError` with a clear message."""
    text = normalize(text)
    tree = validate(text, limits)
    try:
        value = build(tree)
    except CalcError as exc:
        raise CalcError(f"cannot evaluate {shorten(text, 60)!r}: {exc}") from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):
            raise CalcError(
                f"cannot evaluate {shorten(text, 60)!r}: an intermediate number has more than 4300 "
                "digits; use smaller numbers"
            ) from None
        raise CalcError(
            f"cannot evaluate {shorten(text, 60)!r}: ValueError: {shorten(str(exc), 120)}"
        ) from None
    except (ZeroDivisionError, TypeError, ArithmeticError) as exc:
        raise CalcError(
            f"cannot evaluate {shorten(text, 60)!r}: {type(exc).__name__}: {shorten(str(exc), 120)}"
        ) from None
    return format_value(text, value, limits)
