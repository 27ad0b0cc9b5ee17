"""The teacher's reasoning format: a scratchpad a small transformer can follow.

Every number in the scratchpad is written least-significant digit first, in
fixed width ten's complement, so that each generated token depends only on a
few tokens at fixed distances (the same digit one line up, the operator, the
carry just written). That is what lets a 2M-parameter model reach exact
multi-step arithmetic inside the CPU training budget.

Layout for ``(12+34)*5-7`` (``k = 3``)::

    <think>
    +21+43*50-70              the plan: start and steps, operands as 2 reversed digits
    +21=20100000000000        0 + 12: digit, carry, digit, carry, ... (7 digits)
    +43=60400000000000        12 + 34 = 46
    *50=03322000000000        46 * 5 = 230 (carries up to 11 are written 'a', 'b')
    -70=31202000000000        230 - 7 = 223 (borrows as carries)
    </think>

    223

A negative result gets one more line, ``~00=…``, the magnitude ``0 - x``, and
the answer is written with a minus sign. Every compute line has the same
length (:data:`LINE_TOKENS`), so a digit's operands sit a constant number of
tokens back.
"""

from __future__ import annotations

from edgecloud.modelkit.arithmetic.task import Problem

__all__ = ["LINE_TOKENS", "WIDTH", "answer_text", "think_text"]

WIDTH = 7
"""Digits per number. |values| stay below 2.1e6 for k <= 4; 10**7 ten's
complement covers +-5e6."""
MODULUS = 10**WIDTH
LINE_TOKENS = 4 + 2 * WIDTH + 1
CARRY_DIGITS = "0123456789ab"


def _digits(value: int) -> list[int]:
    value %= MODULUS
    return [(value // 10**j) % 10 for j in range(WIDTH)]


def _operand(value: int) -> str:
    if not 0 <= value <= 99:
        raise ValueError(f"operand out of range: {value}")
    return f"{value % 10}{value // 10}"


def _line(op: str, operand: int, acc: int) -> tuple[str, int]:
    """One compute line ``op operand = (digit carry)*WIDTH`` and the new value."""
    a = _digits(acc)
    b = _digits(operand)
    carry = 0
    cells: list[str] = []
    for j in range(WIDTH):
        if op == "+":
            total = a[j] + b[j] + carry
            digit, carry = total % 10, total // 10
        elif op == "-":
            total = a[j] - b[j] - carry
            digit, carry = total % 10, int(total < 0)
        elif op == "*":
            total = a[j] * operand + carry
            digit, carry = total % 10, total // 10
        elif op == "~":
            total = -a[j] - carry
            digit, carry = total % 10, int(total < 0)
        else:
            raise ValueError(f"unknown operator {op!r}")
        cells.append(f"{digit}{CARRY_DIGITS[carry]}")
    if op == "+":
        value = acc + operand
    elif op == "-":
        value = acc - operand
    elif op == "*":
        value = acc * operand
    else:
        value = -acc
    shown = "00" if op == "~" else _operand(operand)
    return f"{op}{shown}={''.join(cells)}\n", value


def think_text(problem: Problem) -> str:
    """The reasoning between ``<think>\\n`` and ``</think>`` for ``problem``."""
    items = [("+", problem.start), *problem.steps]
    plan = "".join(f"{op}{_operand(operand)}" for op, operand in items)
    lines = [plan + "\n"]
    acc = 0
    for op, operand in items:
        line, acc = _line(op, operand, acc)
        lines.append(line)
    if acc != problem.answer:
        raise AssertionError(f"scratchpad disagrees with the answer of {problem.expression}")
    if acc < 0:
        line, _ = _line("~", 0, acc)
        lines.append(line)
    return "".join(lines)


def answer_text(problem: Problem) -> str:
    return str(problem.answer)
