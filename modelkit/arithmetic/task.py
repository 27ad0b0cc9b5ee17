"""The demo task: integer arithmetic queries with exact answers.

A query has ``k`` operators (k in 1..4). It starts with an integer 0..99; each
step appends ``op operand`` with ``op`` drawn uniformly from ``+ - *``, the
operand 0..99 for ``+``/``-`` and 2..12 for ``*``. When the operator is ``*``
and the previous one was ``+`` or ``-`` the expression so far is wrapped in
parentheses, so normal precedence equals left-to-right evaluation.

``k == 1`` is a *simple* query (the edge should answer it); ``k >= 2`` is
*multi-step* (needs reasoning). Wording varies (lead-in, trailing ``?``, case,
spaces around tokens) and must not change the answer.

Generation is seeded. Seeds are split by purpose (:class:`Split`) so that
evaluation never sees a seed used in training.
"""

from __future__ import annotations

import enum
import random
import re
from dataclasses import dataclass

__all__ = [
    "EVAL_MIX",
    "LEAD_INS",
    "Problem",
    "Split",
    "evaluate_expression",
    "generate",
    "make_problem",
    "normalize_query",
    "parse_answer",
    "sample_k",
]

OPERATORS = ("+", "-", "*")
LEAD_INS = ("", "what is ", "compute ", "calculate ")
#: The evaluation mix: 40% simple (k=1), 20% each of k=2, 3, 4.
EVAL_MIX: dict[int, float] = {1: 0.4, 2: 0.2, 3: 0.2, 4: 0.2}
MAX_K = 4


class Split(enum.IntEnum):
    """Disjoint seed spaces. A seed is combined with its split, so the same
    integer seed gives unrelated streams in different splits."""

    TRAIN = 0
    VALIDATION = 1
    TEST = 2
    GOLDEN = 3


@dataclass(frozen=True, slots=True)
class Problem:
    """One query with its exact answer and the steps a careful solver takes."""

    query: str
    """The query as a user would type it (wording and spacing vary)."""
    expression: str
    """The canonical expression, e.g. ``(12+34)*5``."""
    start: int
    steps: tuple[tuple[str, int], ...]
    """``(operator, operand)`` pairs, applied left to right to ``start``."""
    answer: int

    @property
    def k(self) -> int:
        return len(self.steps)

    @property
    def simple(self) -> bool:
        return self.k == 1


def _canonical(start: int, steps: tuple[tuple[str, int], ...]) -> str:
    expr = str(start)
    previous: str | None = None
    for op, operand in steps:
        if op == "*" and previous in ("+", "-"):
            expr = f"({expr})"
        expr = f"{expr}{op}{operand}"
        previous = op
    return expr


def _apply(start: int, steps: tuple[tuple[str, int], ...]) -> int:
    value = start
    for op, operand in steps:
        if op == "+":
            value += operand
        elif op == "-":
            value -= operand
        else:
            value *= operand
    return value


def _spaced(expr: str, rng: random.Random) -> str:
    """Re-emit ``expr`` with random spacing around tokens (never inside numbers)."""
    out: list[str] = []
    for token in re.findall(r"\d+|[()+\-*]", expr):
        if out and rng.random() < 0.5:
            out.append(" " * rng.choice((1, 1, 1, 2)))
        out.append(token)
    return "".join(out)


def _cased(text: str, rng: random.Random) -> str:
    style = rng.random()
    if style < 0.6:
        return text
    if style < 0.75:
        return text.upper()
    if style < 0.9:
        return text[:1].upper() + text[1:]
    return "".join(c.upper() if rng.random() < 0.5 else c for c in text)


def make_problem(k: int, rng: random.Random) -> Problem:
    """Draw one problem with exactly ``k`` operators from ``rng``."""
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be in 1..{MAX_K}, got {k}")
    start = rng.randint(0, 99)
    steps: list[tuple[str, int]] = []
    for _ in range(k):
        op = rng.choice(OPERATORS)
        operand = rng.randint(2, 12) if op == "*" else rng.randint(0, 99)
        steps.append((op, operand))
    frozen = tuple(steps)
    expression = _canonical(start, frozen)
    lead = rng.choice(LEAD_INS)
    query = _cased(lead, rng) + _spaced(expression, rng) + ("?" if rng.random() < 0.5 else "")
    if rng.random() < 0.1:
        query = " " + query
    if rng.random() < 0.1:
        query = query + " "
    return Problem(query=query, expression=expression, start=start, steps=frozen, answer=_apply(start, frozen))


def sample_k(rng: random.Random, mix: dict[int, float] = EVAL_MIX) -> int:
    ks = sorted(mix)
    return rng.choices(ks, weights=[mix[k] for k in ks])[0]


def generate(n: int, seed: int, split: Split, mix: dict[int, float] = EVAL_MIX) -> list[Problem]:
    """``n`` problems drawn from ``mix``; reproducible from ``(seed, split)``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"edgecloud-task/{split.name}/{seed}")
    return [make_problem(sample_k(rng, mix), rng) for _ in range(n)]


_LEAD_RE = re.compile(r"^(what\s*is|compute|calculate)", re.IGNORECASE)
_EXPR_RE = re.compile(r"^[0-9()+\-*]+$")


def normalize_query(query: str) -> str:
    """Canonical text of a query: lower case, no whitespace, no lead-in, no ``?``.

    Two queries with the same normalised text have the same answer. Raises
    ``ValueError`` if what remains is not an expression of this task's alphabet.
    """
    text = "".join(query.split()).lower()
    text = _LEAD_RE.sub("", text).rstrip("?")
    if not text or not _EXPR_RE.match(text):
        raise ValueError(f"not an arithmetic query: {query!r}")
    return text


def evaluate_expression(expression: str) -> int:
    """Exact value of a normalised expression (``+ - *`` and parentheses)."""
    tokens = re.findall(r"\d+|[()+\-*]", expression)
    if "".join(tokens) != expression:
        raise ValueError(f"bad expression: {expression!r}")
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError(f"unexpected end of expression: {expression!r}")
        pos += 1
        return tokens[pos - 1]

    def atom() -> int:
        tok = take()
        if tok == "(":
            value = expr()
            if take() != ")":
                raise ValueError(f"unbalanced parentheses: {expression!r}")
            return value
        if tok.isdigit():
            return int(tok)
        raise ValueError(f"unexpected {tok!r} in {expression!r}")

    def term() -> int:
        value = atom()
        while peek() == "*":
            take()
            value *= atom()
        return value

    def expr() -> int:
        value = term()
        while peek() in ("+", "-"):
            op = take()
            rhs = term()
            value = value + rhs if op == "+" else value - rhs
        return value

    value = expr()
    if pos != len(tokens):
        raise ValueError(f"trailing input in {expression!r}")
    return value


_ANSWER_RE = re.compile(r"-?\d+")


def parse_answer(text: str) -> int | None:
    """The integer a model's answer text states, or ``None`` if it states none."""
    match = _ANSWER_RE.search(text.strip())
    if match is None or match.group(0) != text.strip():
        return None
    return int(match.group(0))
