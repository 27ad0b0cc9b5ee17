from __future__ import annotations

from dataclasses import dataclass

import pytest

from edgecloud.modelkit.arithmetic.scratchpad import LINE_TOKENS, WIDTH, _operand, answer_text, think_text
from edgecloud.modelkit.arithmetic.task import MAX_K, Problem, Split, generate

CARRIES = "0123456789ab"
MOD = 10**WIDTH


# --- an independent reader of the scratchpad format --------------------------------


@dataclass(frozen=True)
class Line:
    op: str
    operand: int
    digits: tuple[int, ...]
    """Least-significant first."""
    carries: tuple[int, ...]

    @property
    def value(self) -> int:
        """The line's result, ten's complement mod 10**WIDTH."""
        return sum(d * 10**j for j, d in enumerate(self.digits))


def _reversed_number(two: str) -> int:
    assert len(two) == 2 and two.isdigit(), two
    return int(two[::-1])


def read_plan(plan: str) -> list[tuple[str, int]]:
    assert len(plan) % 3 == 0 and plan, plan
    items = [(plan[i], _reversed_number(plan[i + 1 : i + 3])) for i in range(0, len(plan), 3)]
    assert items[0][0] == "+", plan
    assert all(op in "+-*" for op, _ in items), plan
    return items


def read_line(text: str) -> Line:
    assert text.endswith("\n") and text[3] == "=", text
    op, body = text[0], text[4:-1]
    assert op in "+-*~", text
    assert len(body) == 2 * WIDTH, text
    digits = tuple(int(body[i]) for i in range(0, len(body), 2))
    assert all(body[i] in CARRIES for i in range(1, len(body), 2)), text
    carries = tuple(CARRIES.index(body[i]) for i in range(1, len(body), 2))
    return Line(op, _reversed_number(text[1:3]), digits, carries)


def expected_carries(op: str, acc: int, operand: int) -> tuple[int, ...]:
    """Carry (or borrow) out of each digit, from whole-number arithmetic on the low digits."""
    out = []
    for j in range(1, WIDTH + 1):
        a, b, m = acc % 10**j, operand % 10**j, 10**j
        if op == "+":
            out.append((a + b) // m)
        elif op == "-":
            out.append(int(a < b))
        elif op == "*":
            out.append(a * operand // m)
        else:  # "~": 0 - a
            out.append(int(a > 0))
    return tuple(out)


def read_scratchpad(text: str) -> int:
    """Check every line of ``text`` against the one before it and return the answer it states."""
    plan, *rest = text.split("\n")
    assert rest[-1] == "", "the scratchpad ends with a newline"
    compute = [line + "\n" for line in rest[:-1]]
    items = read_plan(plan)
    lines = [read_line(line) for line in compute]
    negative = lines[-1].op == "~"
    steps = lines[:-1] if negative else lines
    assert [(line.op, line.operand) for line in steps] == items
    acc = 0  # mod 10**WIDTH
    for line in lines:
        assert line.carries == expected_carries(line.op, acc, line.operand), line
        if line.op == "+":
            acc = (acc + line.operand) % MOD
        elif line.op == "-":
            acc = (acc - line.operand) % MOD
        elif line.op == "*":
            acc = acc * line.operand % MOD
        else:
            assert line.operand == 0
            acc = -acc % MOD
        assert line.value == acc, line
    if negative:
        assert steps[-1].value >= MOD // 2, "a ~ line follows a negative result only"
        return -lines[-1].value
    assert steps[-1].value < MOD // 2, "a negative result must be followed by a ~ line"
    return steps[-1].value


# --- generated problems ------------------------------------------------------------


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    mix = {k: 1 / MAX_K for k in range(1, MAX_K + 1)}
    drawn = generate(3000, seed=7, split=Split.TRAIN, mix=mix)
    assert {p.k for p in drawn} == set(range(1, MAX_K + 1))
    assert any(p.answer < 0 for p in drawn) and any(p.answer >= 0 for p in drawn)
    return drawn


def test_every_compute_line_has_the_same_length(problems: list[Problem]) -> None:
    for p in problems:
        _, *compute = think_text(p).splitlines(keepends=True)
        assert len(compute) == p.k + 1 + (p.answer < 0), p
        assert {len(line) for line in compute} == {LINE_TOKENS}, p


def test_scratchpad_reads_back_to_the_answer(problems: list[Problem]) -> None:
    for p in problems:
        assert read_scratchpad(think_text(p)) == p.answer, p


def test_plan_lists_start_then_steps(problems: list[Problem]) -> None:
    for p in problems:
        plan = think_text(p).split("\n", 1)[0]
        assert len(plan) == 3 * (p.k + 1), p
        assert read_plan(plan) == [("+", p.start), *p.steps], p


def test_answer_text_is_the_answer(problems: list[Problem]) -> None:
    for p in problems[:200]:
        assert int(answer_text(p)) == p.answer


# --- golden examples ----------------------------------------------------------------


GOLDEN = [
    pytest.param(
        Problem("3+4", "3+4", 3, (("+", 4),), 7),
        "+30+40\n+30=30000000000000\n+40=70000000000000\n",
        id="3+4",
    ),
    pytest.param(
        Problem("3-5", "3-5", 3, (("-", 5),), -2),
        "+30-50\n+30=30000000000000\n-50=81919191919191\n~00=21010101010101\n",
        id="3-5-negative",
    ),
    pytest.param(
        Problem("(12+34)*5-7", "(12+34)*5-7", 12, (("+", 34), ("*", 5), ("-", 7)), 223),
        "+21+43*50-70\n+21=20100000000000\n+43=60400000000000\n*50=03322000000000\n-70=31202000000000\n",
        id="(12+34)*5-7",
    ),
    pytest.param(
        Problem("99*12", "99*12", 99, (("*", 12),), 1188),
        "+99*21\n+99=90900000000000\n*21=8a8b1110000000\n",
        id="99*12-carries-above-9",
    ),
    pytest.param(
        Problem("0-0", "0-0", 0, (("-", 0),), 0),
        "+00-00\n+00=00000000000000\n-00=00000000000000\n",
        id="zero-is-not-negative",
    ),
]


@pytest.mark.parametrize(("problem", "expected"), GOLDEN)
def test_golden_scratchpads(problem: Problem, expected: str) -> None:
    assert think_text(problem) == expected
    assert read_scratchpad(expected) == problem.answer


GOOD_NEGATIVE = "+30-50\n+30=30000000000000\n-50=81919191919191\n~00=21010101010101\n"


@pytest.mark.parametrize(
    "corrupt",
    [
        GOOD_NEGATIVE.replace("-50=8", "-50=7"),  # wrong digit
        GOOD_NEGATIVE.replace("-50=81", "-50=80"),  # wrong borrow
        GOOD_NEGATIVE.replace("~00=21010101010101\n", ""),  # negative without the ~ line
        GOOD_NEGATIVE.replace("+30-50\n", "+30-40\n"),  # plan disagrees with the lines
        GOOD_NEGATIVE.replace("=30000000000000", "=3000000000000"),  # short line
    ],
    ids=["digit", "borrow", "missing-tilde", "plan", "short-line"],
)
def test_reader_rejects_corrupted_scratchpads(corrupt: str) -> None:
    """The reader above is strict enough for its agreement with think_text to mean something."""
    assert corrupt != GOOD_NEGATIVE
    with pytest.raises(AssertionError):
        read_scratchpad(corrupt)


def test_scratchpad_refuses_a_wrong_answer() -> None:
    with pytest.raises(AssertionError):
        think_text(Problem("3+4", "3+4", 3, (("+", 4),), 8))


@pytest.mark.parametrize(("value", "expected"), [(0, "00"), (7, "70"), (10, "01"), (42, "24"), (99, "99")])
def test_operand_is_two_reversed_digits(value: int, expected: str) -> None:
    assert _operand(value) == expected


@pytest.mark.parametrize("value", [-1, 100, 1000])
def test_operand_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        _operand(value)
