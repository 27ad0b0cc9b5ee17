from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from edgecloud.modelkit.arithmetic.task import (
    EVAL_MIX,
    Problem,
    Split,
    evaluate_expression,
    generate,
    make_problem,
    normalize_query,
    parse_answer,
)


def test_normalised_query_evaluates_to_the_answer() -> None:
    problems = [p for split in Split for p in generate(750, seed=11, split=split)]
    assert len(problems) == 3000
    for p in problems:
        assert normalize_query(p.query) == p.expression, p
        assert evaluate_expression(normalize_query(p.query)) == p.answer, p


def test_generate_is_deterministic_per_seed_and_split() -> None:
    assert generate(200, seed=5, split=Split.TRAIN) == generate(200, seed=5, split=Split.TRAIN)
    streams = {split: [p.query for p in generate(200, seed=5, split=split)] for split in Split}
    for a, b in itertools.combinations(Split, 2):
        assert streams[a] != streams[b], (a, b)
    assert generate(200, seed=6, split=Split.TRAIN) != generate(200, seed=5, split=Split.TRAIN)


def test_generate_rejects_negative_n_and_allows_zero() -> None:
    assert generate(0, seed=1, split=Split.TEST) == []
    with pytest.raises(ValueError):
        generate(-1, seed=1, split=Split.TEST)


def test_eval_mix_distribution() -> None:
    counts = Counter(p.k for p in generate(5000, seed=3, split=Split.VALIDATION))
    assert set(counts) == set(EVAL_MIX)
    for k, share in EVAL_MIX.items():
        assert abs(counts[k] / 5000 - share) <= 0.03, (k, counts[k])


class ScriptedRandom(random.Random):
    """Draws integers and operators from a script; every other draw takes the
    plain option (no lead-in, no spaces, no case change, no ``?``)."""

    def __init__(self, ints: Sequence[int], ops: Sequence[str]) -> None:
        super().__init__(0)
        self._ints, self._ops = list(ints), list(ops)

    def randint(self, a: int, b: int) -> int:
        value = self._ints.pop(0)
        assert a <= value <= b, (a, value, b)
        return value

    def choice(self, seq: Sequence[Any]) -> Any:
        return self._ops.pop(0) if tuple(seq) == ("+", "-", "*") else seq[0]

    def random(self) -> float:
        return 0.99


PARENTHESISATION = [
    (3, [("+", 4), ("*", 5)], "(3+4)*5", 35),
    (3, [("*", 2), ("+", 1), ("*", 3)], "(3*2+1)*3", 21),
    (3, [("-", 4), ("*", 5)], "(3-4)*5", -5),
    (3, [("*", 2), ("*", 3)], "3*2*3", 18),
    (10, [("+", 1), ("-", 2)], "10+1-2", 9),
    (5, [("-", 1), ("*", 2), ("*", 3)], "(5-1)*2*3", 24),
    (2, [("+", 3), ("*", 4), ("+", 5), ("*", 6)], "((2+3)*4+5)*6", 150),
    (7, [("*", 3)], "7*3", 21),
    (0, [("-", 99)], "0-99", -99),
]


@pytest.mark.parametrize(("start", "steps", "expression", "answer"), PARENTHESISATION)
def test_parenthesisation_rule(start: int, steps: list[tuple[str, int]], expression: str, answer: int) -> None:
    rng = ScriptedRandom([start, *(operand for _, operand in steps)], [op for op, _ in steps])
    p = make_problem(len(steps), rng)
    assert (p.start, p.steps, p.expression, p.answer) == (start, tuple(steps), expression, answer)
    assert p.query == expression
    assert evaluate_expression(expression) == answer


@pytest.mark.parametrize(("steps", "k", "simple"), [((("+", 4),), 1, True), ((("+", 4), ("*", 2)), 2, False)])
def test_problem_k_and_simple(steps: tuple[tuple[str, int], ...], k: int, simple: bool) -> None:
    p = Problem(query="q", expression="e", start=3, steps=steps, answer=0)
    assert (p.k, p.simple) == (k, simple)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_operand_ranges(k: int) -> None:
    rng = random.Random(k)
    seen_ops: set[str] = set()
    for _ in range(500):
        p = make_problem(k, rng)
        assert p.k == k and 0 <= p.start <= 99
        for op, operand in p.steps:
            seen_ops.add(op)
            assert (2 <= operand <= 12) if op == "*" else (0 <= operand <= 99), (op, operand)
    assert seen_ops == {"+", "-", "*"}


@pytest.mark.parametrize("k", [0, 5, -1])
def test_make_problem_rejects_k_out_of_range(k: int) -> None:
    with pytest.raises(ValueError):
        make_problem(k, random.Random(0))


NORMALIZE = [
    ("3+4", "3+4"),
    ("What is 3+4?", "3+4"),
    ("  COMPUTE ( 3 + 4 ) * 5 ?", "(3+4)*5"),
    ("calculate 12 -  7", "12-7"),
    ("WhAt Is 2*3", "2*3"),
    ("whatis 2*3?", "2*3"),
    ("Calculate\t99\n", "99"),
]


@pytest.mark.parametrize(("query", "expected"), NORMALIZE)
def test_normalize_query(query: str, expected: str) -> None:
    assert normalize_query(query) == expected


GARBAGE = ["hello", "", "   ", "?", "what is", "2+2; rm -rf", "2/3", "2^3", "what is 2+x", "1e3"]


@pytest.mark.parametrize("query", GARBAGE)
def test_normalize_query_rejects_garbage(query: str) -> None:
    with pytest.raises(ValueError):
        normalize_query(query)


@pytest.mark.parametrize("expression", ["(1+2", "1+", "1+2)", "1 + 2", "", "*3"])
def test_evaluate_expression_rejects_malformed(expression: str) -> None:
    with pytest.raises(ValueError):
        evaluate_expression(expression)


PARSE = [
    ("42", 42),
    ("-7", -7),
    (" 5 ", 5),
    ("0\n", 0),
    ("abc", None),
    ("4 2", None),
    ("", None),
    ("+5", None),
    ("3.5", None),
    ("--7", None),
    ("the answer is 42", None),
]


@pytest.mark.parametrize(("text", "expected"), PARSE)
def test_parse_answer(text: str, expected: int | None) -> None:
    assert parse_answer(text) == expected
