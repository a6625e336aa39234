"""The calculator's allow-list, its sympy builder, and the child-process loop.

Nothing here calls ``eval``, ``exec``, ``sympify`` or ``parse_expr``. An expression is
parsed with ``ast.parse(text, mode="eval")``; :func:`validate` walks the tree against an
allow-list and static size limits, and :func:`build` turns the validated tree into sympy
objects node by node. The parent process validates (fast, clear refusals); the child
validates again with the same code before building, so the child never trusts its input.

Allowed:
  numbers (int and float literals; ``1_000`` too), ``+ - * / ** % //``, unary ``+``/``-``,
  parentheses; names ``pi``, ``E``/``e``, ``I`` (imaginary unit); calls, by bare name and
  positional arguments only, of: sqrt, cbrt, root(x, n), exp, log(x) / log(x, base), ln,
  log10, log2, sin, cos, tan, asin, acos, atan, atan2(y, x), sinh, cosh, tanh, abs, floor,
  ceiling / ceil, round(x) / round(x, digits), factorial, binomial, gcd, lcm, min, max.
  ``/`` is exact (``1/3`` is a Rational); ``^`` is refused (it is XOR in this syntax: write
  ``**``).

Static limits (before any evaluation): text length, AST node count, nesting depth, the
number of digits of integer powers, the size of exponents and factorial arguments. What
slips through is stopped by the child's time and memory limits (see ``calculator.py``).

This file is also the child program: ``python calc_worker.py`` (loaded by path, it needs
only the standard library and sympy) reads one JSON request per line on stdin and writes one
JSON reply per line on stdout.
"""

from __future__ import annotations

import ast
import json
import math
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Any

__all__ = ["CalcError", "Limits", "evaluate", "validate", "main"]


class CalcError(ValueError):
    """An expression was refused or could not be evaluated; the message says why."""


@dataclass(frozen=True)
class Limits:
    """Static limits checked before evaluation. All are inclusive maxima."""

    max_length: int = 1000
    max_nodes: int = 300
    max_depth: int = 40
    max_digits: int = 100_000  # digits of an integer power such as 3**200000
    max_exponent: int = 1_000_000  # |exponent| when the base is not a known integer
    max_factorial: int = 20_000  # n in factorial(n) / binomial(n, k) when n is known
    max_round_digits: int = 100
    max_output_chars: int = 400
    digits: int = 15  # significant digits of the numeric value


#: function name -> (min args, max args); the builder for each is in ``_functions``.
FUNCTIONS: dict[str, tuple[int, int]] = {
    "sqrt": (1, 1), "cbrt": (1, 1), "root": (2, 2), "exp": (1, 1),
    "log": (1, 2), "ln": (1, 1), "log10": (1, 1), "log2": (1, 1),
    "sin": (1, 1), "cos": (1, 1), "tan": (1, 1), "asin": (1, 1), "acos": (1, 1),
    "atan": (1, 1), "atan2": (2, 2), "sinh": (1, 1), "cosh": (1, 1), "tanh": (1, 1),
    "abs": (1, 1), "floor": (1, 1), "ceiling": (1, 1), "ceil": (1, 1),
    "round": (1, 2), "factorial": (1, 1), "binomial": (2, 2),
    "gcd": (2, 10), "lcm": (2, 10), "min": (1, 20), "max": (1, 20),
}
CONSTANTS = ("pi", "E", "e", "I")

_OPERATORS = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**",
    ast.Mod: "%", ast.FloorDiv: "//",
}
_HINT = (
    "write one arithmetic expression with numbers, + - * / ** % //, pi, E, and functions "
    "such as sqrt(2), log(8, 2) or factorial(10)"
)
_REFUSED = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts ([...])",
    ast.Lambda: "lambda functions",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "generator expressions",
    ast.JoinedStr: "f-strings",
    ast.FormattedValue: "f-strings",
    ast.Starred: "starred arguments (*x)",
    ast.Compare: "comparisons",
    ast.BoolOp: "'and'/'or'",
    ast.IfExp: "conditional expressions",
    ast.NamedExpr: "assignments (:=)",
    ast.List: "lists",
    ast.Tuple: "tuples (for thousands write 1000, not 1,000)",
    ast.Set: "sets",
    ast.Dict: "dicts",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Slice: "slices",
}
_UNICODE_OPS = str.maketrans({"\u00d7": "*", "\u00f7": "/", "\u2212": "-", "\u2013": "-"})


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def normalize(text: str) -> str:
    """The expression a model meant: stripped, ``×÷−`` as ``* / -``, a trailing ``=`` dropped."""
    text = str(text).translate(_UNICODE_OPS).strip()
    if text.endswith("=") and not text.endswith("=="):
        text = text[:-1].rstrip()
    return text


# -- validation ------------------------------------------------------------------------
def validate(text: str, limits: Limits = Limits()) -> ast.Expression:
    """Parse ``text`` and check it against the allow-list and static limits.

    Returns the tree; raises :class:`CalcError` naming the offending construct.
    """
    if not isinstance(text, str):
        raise CalcError(f"the expression must be a string, got {text!r}; {_HINT}")
    if not text.strip():
        raise CalcError(f"empty expression; {_HINT}")
    if len(text) > limits.max_length:
        raise CalcError(
            f"expression is {len(text)} characters long, over the limit of "
            f"{limits.max_length}; split it into smaller expressions"
        )
    try:
        with warnings.catch_warnings():  # "invalid decimal literal" and friends
            warnings.simplefilter("ignore")
            tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        where = f" at column {exc.offset}" if exc.offset else ""
        raise CalcError(
            f"cannot parse {_short(text)!r}: {exc.msg}{where}; {_HINT}"
        ) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise CalcError(
            f"cannot parse {_short(text)!r} ({type(exc).__name__}: too deeply nested or "
            f"malformed); {_HINT}"
        ) from None
    _Checker(text, limits).check(tree)
    return tree


class _Checker:
    def __init__(self, text: str, limits: Limits) -> None:
        self.text = text
        self.limits = limits
        self.nodes = 0

    def refuse(self, node: ast.AST, what: str, *, show: bool = True) -> CalcError:
        segment = ast.get_source_segment(self.text, node) if show else None
        where = f" ({_short(segment, 40)!r})" if segment else ""
        return CalcError(
            f"calculator refused {_short(self.text)!r}: {what}{where} is not allowed; {_HINT}"
        )

    def check(self, tree: ast.Expression) -> None:
        self._visit(tree.body, 1)

    def _visit(self, node: ast.AST, depth: int) -> None:
        self.nodes += 1
        if self.nodes > self.limits.max_nodes:
            raise CalcError(
                f"expression {_short(self.text)!r} has more than {self.limits.max_nodes} "
                "parts; split it into smaller expressions"
            )
        if depth > self.limits.max_depth:
            raise CalcError(
                f"expression {_short(self.text)!r} is nested more than "
                f"{self.limits.max_depth} levels deep; simplify it"
            )
        if isinstance(node, ast.Constant):
            self._constant(node)
        elif isinstance(node, ast.Name):
            self._name(node)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.UAdd, ast.USub)):
                op = "'~'" if isinstance(node.op, ast.Invert) else "'not'"
                raise self.refuse(node, f"the operator {op}")
            self._visit(node.operand, depth + 1)
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _OPERATORS:
                if isinstance(node.op, ast.BitXor):
                    raise self.refuse(node, "'^' (XOR in this syntax; write ** for powers)")
                raise self.refuse(node, f"the operator {type(node.op).__name__}")
            # A left-leaning chain (1+2+3+...) is flat to a reader: it does not add depth.
            self._visit(node.left, depth + (0 if isinstance(node.left, ast.BinOp) else 1))
            self._visit(node.right, depth + 1)
            if isinstance(node.op, ast.Pow):
                self._power(node)
        elif isinstance(node, ast.Call):
            self._call(node, depth)
        else:
            what = _REFUSED.get(type(node))
            if what is None:
                what = f"{type(node).__name__} expressions"
            raise self.refuse(node, what)

    def _constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, bool) or value is None or value is Ellipsis:
            raise self.refuse(node, f"the constant {value!r}", show=False)
        if isinstance(value, (str, bytes)):
            raise self.refuse(node, "strings")
        if isinstance(value, complex):
            raise self.refuse(node, "complex literals (write 2*I for 2j)")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.refuse(node, "a number too large for a float literal")
        if not isinstance(value, (int, float)):
            raise self.refuse(node, f"the literal {value!r}")

    def _name(self, node: ast.Name) -> None:
        if node.id.startswith("_"):
            raise self.refuse(node, f"the name {node.id!r} (names starting with '_')", show=False)
        if node.id in FUNCTIONS:
            raise self.refuse(
                node, f"the function {node.id!r} without a call (write {node.id}(x))", show=False
            )
        if node.id not in CONSTANTS:
            raise CalcError(
                f"calculator refused {_short(self.text)!r}: unknown name {node.id!r}; the "
                f"calculator works on numbers only (constants: {', '.join(CONSTANTS)}; "
                f"functions: {', '.join(FUNCTIONS)})"
            )

    def _call(self, node: ast.Call, depth: int) -> None:
        if isinstance(node.func, ast.Attribute):
            raise self.refuse(node.func, "attribute access")
        if isinstance(node.func, ast.Lambda):
            raise self.refuse(node.func, "lambda functions")
        if not isinstance(node.func, ast.Name):
            raise self.refuse(node.func, "calling the result of an expression")
        name = node.func.id
        if name.startswith("_"):
            raise self.refuse(node.func, f"the name {name!r} (names starting with '_')", show=False)
        if name not in FUNCTIONS:
            raise CalcError(
                f"calculator refused {_short(self.text)!r}: unknown function {name!r}; "
                f"allowed functions: {', '.join(FUNCTIONS)}"
            )
        if node.keywords:
            raise self.refuse(node, f"keyword arguments ({name}(..., x=...))")
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.refuse(arg, "starred arguments (*x)")
        low, high = FUNCTIONS[name]
        if not low <= len(node.args) <= high:
            count = str(low) if low == high else f"{low} to {high}"
            raise CalcError(
                f"calculator refused {_short(self.text)!r}: {name}() takes {count} "
                f"argument(s), got {len(node.args)}"
            )
        for arg in node.args:
            self._visit(arg, depth + 1)
        if name in ("factorial", "binomial"):
            n = self._fold(node.args[0])
            size = n
            if name == "binomial":
                k = self._fold(node.args[1])
                size = None if n is None or k is None else min(abs(k), abs(n - k))
            if size is not None and size > self.limits.max_factorial:
                arg = _magnitude(n) if name == "factorial" else f"{_magnitude(n)}, ..."
                raise CalcError(
                    f"calculator refused {_short(self.text)!r}: {name}({arg}) is too large "
                    f"(limit {self.limits.max_factorial})"
                )
        if name == "round" and len(node.args) == 2:
            digits = self._fold(node.args[1])
            if digits is None or not 0 <= digits <= self.limits.max_round_digits:
                raise CalcError(
                    f"calculator refused {_short(self.text)!r}: round(x, n) needs a whole "
                    f"number n from 0 to {self.limits.max_round_digits}"
                )

    def _fold(self, node: ast.AST) -> int | None:
        """The exact value of a small integer sub-expression, or None if unknown.

        Only int literals, unary +/-, + - * // % ** and factorial are folded, and a value
        over ``max_digits`` digits is refused before it is computed, so this stays cheap.
        """
        try:
            return _fold_int(node, self.limits)
        except _TooBig:
            raise CalcError(
                f"calculator refused {_short(self.text)!r}: an integer in it would have more "
                f"than {self.limits.max_digits} digits"
            ) from None

    def _power(self, node: ast.BinOp) -> None:
        exponent = self._fold(node.right)
        if exponent is None:
            return
        base = self._fold(node.left)
        text = _short(ast.get_source_segment(self.text, node) or self.text, 40)
        if base is not None and abs(base) > 1:
            digits = _power_digits(base, exponent)
            if digits > self.limits.max_digits:
                raise CalcError(
                    f"calculator refused {text!r}: the result would have "
                    f"{f'about {digits:.3g}' if math.isfinite(digits) else 'more than 1e300'} "
                    f"digits (limit {self.limits.max_digits})"
                )
        elif base is None and abs(exponent) > self.limits.max_exponent:
            raise CalcError(
                f"calculator refused {text!r}: exponent {_magnitude(exponent)} is too "
                f"large (limit {self.limits.max_exponent})"
            )


def _power_digits(base: int, exponent: int) -> float:
    """Decimal digits of ``base ** exponent`` (|base| > 1), without computing it."""
    if exponent.bit_length() > 1000:
        return math.inf
    return abs(exponent) * math.log10(abs(base))


def _magnitude(n: int) -> str:
    if n.bit_length() < 60:
        return str(n)
    return f"about 10**{int(n.bit_length() * math.log10(2))}"


class _TooBig(Exception):
    pass


def _fold_int(node: ast.AST, limits: Limits) -> int | None:
    max_bits = int(limits.max_digits * 3.33) + 64
    if isinstance(node, ast.Constant):
        value = node.value
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _fold_int(node.operand, limits)
        if value is None:
            return None
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left = _fold_int(node.left, limits)
        right = _fold_int(node.right, limits)
        if left is None or right is None:
            return None
        op = node.op
        if isinstance(op, ast.Pow):
            if right < 0:
                return None
            if abs(left) > 1 and _power_digits(left, right) > limits.max_digits:
                raise _TooBig()
            return left**right
        if isinstance(op, ast.Mult):
            if left.bit_length() + right.bit_length() > max_bits:
                raise _TooBig()
            return left * right
        if isinstance(op, ast.Add):
            return left + right
        if isinstance(op, ast.Sub):
            return left - right
        if right == 0:
            return None
        if isinstance(op, ast.FloorDiv):
            return left // right
        if isinstance(op, ast.Mod):
            return left % right
        return None  # '/' gives a Rational
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "factorial"
        and len(node.args) == 1
    ):
        n = _fold_int(node.args[0], limits)
        if n is None or n < 0:
            return None
        if n > limits.max_factorial:
            raise _TooBig()
        return math.factorial(n)
    return None


# -- building and evaluating (child side; imports sympy) --------------------------------
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
            f"{_short(text)!r} is undefined or infinite; check for a division by zero or a "
            "function outside its domain (log(0), ...)"
        )
    echo = _short(text, min(120, limits.max_output_chars // 3))
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
            exact = _short(exact, max(10, room - len(approx) - 3))
    line = f"{echo} = {exact}"
    if approx is not None and re.sub(r"\.0(?![\d])", "", approx) != exact:
        line += f" \u2248 {approx}"
    return _short(line, limits.max_output_chars)


def evaluate(text: str, limits: Limits = Limits()) -> str:
    """Validate, build and format one expression (in-process; the tool calls this in its
    child). Raises :class:`CalcError` with a clear message."""
    text = normalize(text)
    tree = validate(text, limits)
    try:
        value = build(tree)
    except CalcError as exc:
        raise CalcError(f"cannot evaluate {_short(text)!r}: {exc}") from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):
            raise CalcError(
                f"cannot evaluate {_short(text)!r}: an intermediate number has more than 4300 "
                "digits; use smaller numbers"
            ) from None
        raise CalcError(
            f"cannot evaluate {_short(text)!r}: ValueError: {_short(str(exc), 120)}"
        ) from None
    except (ZeroDivisionError, TypeError, ArithmeticError) as exc:
        raise CalcError(
            f"cannot evaluate {_short(text)!r}: {type(exc).__name__}: {_short(str(exc), 120)}"
        ) from None
    return format_value(text, value, limits)


# -- the child program -----------------------------------------------------------------
def main() -> None:
    """Child loop: ``{"id", "expr"}`` lines in, ``{"id", "output", "error"}`` lines out.

    The first line read is the configuration ``{"limits": {...}, "memory": bytes}``; the
    child imports sympy, applies ``RLIMIT_AS`` and then says ``{"ready": true}``.
    """
    stdin, stdout = sys.stdin, sys.stdout
    config = json.loads(stdin.readline() or "{}")
    limits = Limits(**config.get("limits", {}))
    import sympy  # noqa: F401  (import before the memory limit, and before "ready")

    memory = int(config.get("memory") or 0)
    if memory > 0:
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        except (ImportError, ValueError, OSError):
            pass
    stdout.write(json.dumps({"ready": True}) + "\n")
    stdout.flush()
    for line in stdin:
        try:
            request = json.loads(line)
        except json.JSONDecodeError:
            continue
        reply: dict[str, Any] = {"id": request.get("id")}
        try:
            reply["output"] = evaluate(str(request.get("expr", "")), limits)
        except CalcError as exc:
            reply["error"] = str(exc)
        except MemoryError:
            reply["error"] = (
                f"evaluating {_short(str(request.get('expr', '')))!r} needed more than the "
                f"calculator's memory limit ({memory >> 20} MiB); use smaller numbers"
            )
        except RecursionError:
            reply["error"] = "expression too deeply nested to evaluate"
        except Exception as exc:  # a sympy failure is reported, the child lives on
            reply["error"] = f"{type(exc).__name__}: {_short(str(exc), 200)}"
        stdout.write(json.dumps(reply) + "\n")
        stdout.flush()


if __name__ == "__main__":
    main()
