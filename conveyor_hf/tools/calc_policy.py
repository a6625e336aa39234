"""What the calculator accepts: the allow-list and static limits an expression is checked against.

Nothing here calls ``eval``, ``exec``, ``sympify`` or ``parse_expr``. An expression is
parsed with ``ast.parse(text, mode="eval")``; :func:`validate` walks the tree against an
allow-list and static size limits and raises :class:`CalcError` naming the offending
construct. The parent process validates (fast, clear refusals); the child validates again
with the same code before building (:mod:`conveyor_hf.tools.calc_sympy`), so the child
never trusts its input.

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

Standard library only (the calculator's child imports it without the package).
"""

from __future__ import annotations

import ast
import math
import warnings
from dataclasses import dataclass

from conveyor_hf.text import shorten

__all__ = ["CONSTANTS", "FUNCTIONS", "CalcError", "Limits", "normalize", "validate"]


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


#: function name -> (min args, max args); each is built by :mod:`conveyor_hf.tools.calc_sympy`.
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


def normalize(text: str) -> str:
    """The expression a model meant: stripped, ``×÷−`` as ``* / -``, a trailing ``=`` dropped."""
    text = str(text).translate(_UNICODE_OPS).strip()
    if text.endswith("=") and not text.endswith("=="):
        text = text[:-1].rstrip()
    return text


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
            f"cannot parse {shorten(text, 60)!r}: {exc.msg}{where}; {_HINT}"
        ) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise CalcError(
            f"cannot parse {shorten(text, 60)!r} ({type(exc).__name__}: too deeply nested or "
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
        where = f" ({shorten(segment, 40)!r})" if segment else ""
        return CalcError(
            f"calculator refused {shorten(self.text, 60)!r}: {what}{where} is not allowed; {_HINT}"
        )

    def check(self, tree: ast.Expression) -> None:
        self._visit(tree.body, 1)

    def _visit(self, node: ast.AST, depth: int) -> None:
        self.nodes += 1
        if self.nodes > self.limits.max_nodes:
            raise CalcError(
                f"expression {shorten(self.text, 60)!r} has more than {self.limits.max_nodes} "
                "parts; split it into smaller expressions"
            )
        if depth > self.limits.max_depth:
            raise CalcError(
                f"expression {shorten(self.text, 60)!r} is nested more than "
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
                f"calculator refused {shorten(self.text, 60)!r}: unknown name {node.id!r}; the "
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
                f"calculator refused {shorten(self.text, 60)!r}: unknown function {name!r}; "
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
                f"calculator refused {shorten(self.text, 60)!r}: {name}() takes {count} "
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
                    f"calculator refused {shorten(self.text, 60)!r}: {name}({arg}) is too large "
                    f"(limit {self.limits.max_factorial})"
                )
        if name == "round" and len(node.args) == 2:
            digits = self._fold(node.args[1])
            if digits is None or not 0 <= digits <= self.limits.max_round_digits:
                raise CalcError(
                    f"calculator refused {shorten(self.text, 60)!r}: round(x, n) needs a whole "
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
                f"calculator refused {shorten(self.text, 60)!r}: an integer in it would have more "
                f"than {self.limits.max_digits} digits"
            ) from None

    def _power(self, node: ast.BinOp) -> None:
        exponent = self._fold(node.right)
        if exponent is None:
            return
        base = self._fold(node.left)
        text = shorten(ast.get_source_segment(self.text, node) or self.text, 40)
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
