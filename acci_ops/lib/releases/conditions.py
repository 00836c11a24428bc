"""Success and failure conditions of an analysis metric: ``value < 0.01``, ``value >= 1 and value < 5``.

Operators write them in YAML, so they are parsed by a tokenizer and a whitelist grammar, never ``eval``:
comparisons of ``value`` with a number, joined by ``and`` / ``or``, with parentheses. Parsing happens at
config time, so a typo fails before anything is deployed. A condition also explains itself: the verdict's
reason says ``0.134 >= 0.01``, the measured value against the operator's own threshold.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from acci_ops.lib.core.errors import ConfigError

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne}
NEGATED = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}
_TOKEN = re.compile(r"\s*(?:(<=|>=|==|!=|<|>)|([()])|([^\s()<>=!]+)|(\S))")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_OPS_TEXT = "<, <=, >, >=, ==, !="


def format_value(value: float) -> str:
    """A measured value as the reason shows it: ``0.134``, ``1``, ``0.004975``, ``1.2e+04``."""
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.4g}"


@dataclass(frozen=True)
class Compare:
    op: str
    threshold: float
    text: str  # the threshold as written, so the reason shows the operator's number

    def holds(self, value: float) -> bool:
        return OPERATORS[self.op](value, self.threshold)

    def facts(self, value: float, want: bool) -> list[str]:
        return [f"{format_value(value)} {self.op if want else NEGATED[self.op]} {self.text}"]


@dataclass(frozen=True)
class Junction:
    word: str  # "and" / "or"
    parts: tuple[Compare | Junction, ...]

    def holds(self, value: float) -> bool:
        results = (part.holds(value) for part in self.parts)
        return all(results) if self.word == "and" else any(results)

    def facts(self, value: float, want: bool) -> list[str]:
        # Only true statements: why an `and` failed is its false parts, why an `or` held is its true parts.
        if (self.word == "and") == want:
            chosen = self.parts
        else:
            chosen = tuple(part for part in self.parts if part.holds(value) == want)
        return [fact for part in chosen for fact in part.facts(value, want)]


@dataclass(frozen=True)
class Condition:
    """A parsed condition: ``holds(value)`` decides, ``explain(value)`` says why in true statements."""

    text: str
    tree: Compare | Junction

    def holds(self, value: float) -> bool:
        return self.tree.holds(value)

    def explain(self, value: float) -> str:
        """``0.134 >= 0.01`` when ``value < 0.01`` does not hold; ``0.002 < 0.01`` when it does."""
        return " and ".join(self.tree.facts(value, self.holds(value)))


class _Parser:
    def __init__(self, text: str, what: str) -> None:
        self.what = what
        self.tokens: list[tuple[str, str]] = []
        for match in _TOKEN.finditer(text):
            op, paren, word, other = match.groups()
            if op:
                self.tokens.append(("op", op))
            elif paren:
                self.tokens.append((paren, paren))
            elif word:
                self.tokens.append(("word", word))
            elif other:
                self.tokens.append(("other", other))
        self.pos = 0

    def fail(self, problem: str) -> ConfigError:
        return ConfigError(f"{self.what}: {problem}")

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str] | None:
        token = self.peek()
        self.pos += token is not None
        return token

    def is_word(self, word: str) -> bool:
        token = self.peek()
        return token is not None and token[0] == "word" and token[1].lower() == word

    def parse(self) -> Compare | Junction:
        if not self.tokens:
            raise self.fail("is empty; write e.g. 'value < 0.01'")
        tree = self.disjunction()
        leftover = self.peek()
        if leftover is not None:
            if leftover[0] == ")":
                raise self.fail("')' without a matching '('")
            raise self.fail(f"unexpected {leftover[1]!r}; join comparisons with 'and' / 'or'")
        return tree

    def disjunction(self) -> Compare | Junction:
        parts = [self.conjunction()]
        while self.is_word("or"):
            self.take()
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else Junction("or", tuple(parts))

    def conjunction(self) -> Compare | Junction:
        parts = [self.atom()]
        while self.is_word("and"):
            self.take()
            parts.append(self.atom())
        return parts[0] if len(parts) == 1 else Junction("and", tuple(parts))

    def atom(self) -> Compare | Junction:
        token = self.take()
        if token is None:
            raise self.fail("ends early; expected 'value <op> number'")
        if token[0] == "(":
            inner = self.disjunction()
            closing = self.take()
            if closing is None or closing[0] != ")":
                raise self.fail("'(' without a matching ')'")
            return inner
        if token != ("word", "value"):
            raise self.fail(f"expected 'value', got {token[1]!r} (only 'value <op> number' joined by and/or)")
        op = self.take()
        if op is None or op[0] != "op":
            got = "nothing" if op is None else repr(op[1])
            raise self.fail(f"expected a comparison ({_OPS_TEXT}) after 'value', got {got}")
        number = self.take()
        if number is None:
            raise self.fail(f"expected a number after {op[1]!r}")
        if number[0] != "word":
            raise self.fail(f"expected a number after {op[1]!r}, got {number[1]!r}")
        if not _NUMBER.fullmatch(number[1]):
            raise self.fail(f"{number[1]!r} is not a number")
        return Compare(op[1], float(number[1]), number[1])


def parse_condition(text: str, what: str) -> Condition:
    """Parse ``text``; a ConfigError starts with ``what`` (e.g. "failure condition 'value < abc' of metric
    'error_ratio'") so the operator finds the line in the YAML."""
    if not isinstance(text, str):
        raise ConfigError(f"{what}: must be a string like 'value < 0.01', not {type(text).__name__}")
    return Condition(text.strip(), _Parser(text, what).parse())
