"""The think block (``edgecloud.shared.reasoner.thinking``): the per-token tracker the cloud engine,
the model kit's decoder and the edge runtime share, read both ways (a leading block, tags
anywhere), and the text helpers that split a generation and strip old reasoning from a turn."""

from __future__ import annotations

import pytest

from edgecloud.shared.reasoner.thinking import (
    THINK_END,
    THINK_START,
    Phase,
    Piece,
    ThinkTracker,
    split_reasoning,
    strip_reasoning,
)

# Token ids: <think>, </think>, the end token, then ordinary tokens.
S, E, EOS, A, B, C = 0, 1, 2, 5, 6, 7
OPEN, REASON, CLOSE, ANSWER, STOP = Piece.OPEN, Piece.REASONING, Piece.CLOSE, Piece.ANSWER, Piece.STOP


def feed(tracker: ThinkTracker, picked: list[int], *, close_at: int | None = None) -> tuple[list[int], list[Piece]]:
    """Run ``picked`` through ``choose`` and ``push`` as a decoder does: (emitted tokens, pieces)."""
    emitted, pieces = [], []
    for step, token in enumerate(picked):
        token = tracker.choose(token, close=step == close_at)
        emitted.append(token)
        pieces.append(tracker.push(token))
    return emitted, pieces


@pytest.mark.parametrize(
    ("tokens", "pieces", "reasoning", "answer"),
    [
        ([], [], 0, []),  # nothing generated: no answer
        ([A, B], [ANSWER, ANSWER], 0, [A, B]),  # no think block: all of it is the answer
        ([S, A, B, E, C], [OPEN, REASON, REASON, CLOSE, ANSWER], 2, [C]),
        ([S, E, C], [OPEN, CLOSE, ANSWER], 0, [C]),  # an empty block
        ([S, A, B], [OPEN, REASON, REASON], 2, []),  # unterminated: cut while reasoning, no answer
        ([S], [OPEN], 0, []),
        ([S, S, E], [OPEN, REASON, CLOSE], 1, []),  # inside, only </think> is markup
        ([S, E, S, A, E], [OPEN, CLOSE, ANSWER, ANSWER, ANSWER], 0, [S, A, E]),  # after it, tags are the answer
        ([E, A], [ANSWER, ANSWER], 0, [E, A]),  # a block opens the generation or never
        ([A, S, B], [ANSWER, ANSWER, ANSWER], 0, [A, S, B]),
    ],
)
def test_a_leading_block_is_read_once_from_the_first_token(
    tokens: list[int], pieces: list[Piece], reasoning: int, answer: list[int]
) -> None:
    tracker = ThinkTracker(S, E)
    assert [tracker.push(t) for t in tokens] == pieces
    assert (tracker.reasoning_tokens, tracker.answer(tokens), tracker.forced) == (reasoning, answer, False)
    assert tracker.pushed == len(tokens)


@pytest.mark.parametrize(
    ("budget", "phase", "picked", "close_at", "emitted", "reasoning", "forced"),
    [
        (2, Phase.BEFORE, [S, A, B, C, C], None, [S, A, B, E, C], 2, True),  # the budget forces </think>
        (2, Phase.BEFORE, [S, A, B, E, C], None, [S, A, B, E, C], 2, False),  # the model closed it itself
        (0, Phase.INSIDE, [A, B], None, [E, B], 0, True),  # budget 0 with the block open: closed at once
        (0, Phase.AFTER, [A, EOS], None, [A, EOS], 0, False),  # budget 0: the prompt pre-filled the block
        (0, Phase.BEFORE, [A, B], None, [A, B], 0, False),  # nothing forced before the block opens
        (9, Phase.BEFORE, [S, A, EOS, C], None, [S, A, E, C], 1, False),  # an end token inside closes it
        (1, Phase.BEFORE, [S, A, EOS, C], None, [S, A, E, C], 1, True),  # ... forced once the budget is spent
        (9, Phase.BEFORE, [S, A, B, C], 2, [S, A, E, C], 1, False),  # no room left: closed, not forced
        (None, Phase.BEFORE, [S, A, A, A, A], None, [S, A, A, A, A], 4, False),  # no budget: never forced
        (1, Phase.BEFORE, [A, A, A], None, [A, A, A], 0, False),  # answered directly
    ],
)
def test_the_budget_forces_the_close_of_a_leading_block(
    budget: int | None,
    phase: Phase,
    picked: list[int],
    close_at: int | None,
    emitted: list[int],
    reasoning: int,
    forced: bool,
) -> None:
    tracker = ThinkTracker(S, E, eos=EOS, budget=budget, phase=phase)
    assert feed(tracker, picked, close_at=close_at)[0] == emitted
    assert (tracker.reasoning_tokens, tracker.forced) == (reasoning, forced)


def test_spent_and_the_phase_follow_the_block() -> None:
    tracker = ThinkTracker(S, E, eos=EOS, budget=1)
    assert (tracker.phase, tracker.spent) == (Phase.BEFORE, False)
    tracker.push(S)
    assert (tracker.phase, tracker.spent) == (Phase.INSIDE, False)
    tracker.push(A)
    assert (tracker.phase, tracker.spent) == (Phase.INSIDE, True)
    tracker.push(E)
    assert tracker.phase is Phase.AFTER
    assert ThinkTracker(S, E).spent is False  # no budget: never spent
    assert ThinkTracker(S, E, budget=0).spent is True


@pytest.mark.parametrize(
    ("phase", "budget", "picked", "emitted", "pieces", "reasoning", "forced", "answer"),
    [
        # The prompt opened the block; the answer follows the last </think>.
        (Phase.INSIDE, None, [A, E, B, EOS], [A, E, B, EOS], [REASON, CLOSE, ANSWER, ANSWER], 1, False, [B, EOS]),
        # Tags are never reasoning; a block re-opens after the answer and counts again.
        (Phase.BEFORE, None, [S, S, A, E, B, S, C], None, None, 2, False, [B, S, C]),
        # An end token inside a block is kept (the sequence stops unanswered), even past the budget.
        (Phase.INSIDE, 1, [A, EOS], [A, EOS], [REASON, STOP], 1, False, []),
        (Phase.INSIDE, 1, [A, B, C], [A, E, C], [REASON, CLOSE, ANSWER], 1, True, [C]),
        (Phase.INSIDE, 0, [A], [E], [CLOSE], 0, True, []),  # budget 0: closed at once, nothing after
        # No </think>: everything is the answer when nothing was reasoned, nothing when a block was cut.
        (Phase.INSIDE, None, [EOS], [EOS], [STOP], 0, False, [EOS]),
        (Phase.BEFORE, None, [A, B, EOS], [A, B, EOS], [ANSWER, ANSWER, ANSWER], 0, False, [A, B, EOS]),
        (Phase.BEFORE, None, [S, EOS], [S, EOS], [OPEN, STOP], 0, False, [S, EOS]),
        (Phase.BEFORE, None, [A, S, B], [A, S, B], [ANSWER, OPEN, REASON], 1, False, []),
        (Phase.BEFORE, None, [E, A], [E, A], [CLOSE, ANSWER], 0, False, [A]),  # a stray </think> still closes
    ],
)
def test_tags_anywhere_read_every_tag(
    phase: Phase,
    budget: int | None,
    picked: list[int],
    emitted: list[int] | None,
    pieces: list[Piece] | None,
    reasoning: int,
    forced: bool,
    answer: list[int],
) -> None:
    tracker = ThinkTracker(S, E, eos=EOS, budget=budget, phase=phase, tags_anywhere=True)
    tokens, got = feed(tracker, picked)
    assert tokens == (emitted if emitted is not None else picked)
    if pieces is not None:
        assert got == pieces
    assert (tracker.reasoning_tokens, tracker.forced, tracker.answer(tokens)) == (reasoning, forced, answer)


@pytest.mark.parametrize(
    ("content", "stripped"),
    [
        ("4", "4"),  # no think block: as it is
        ("<think>\n2+2=4\n</think>\n\n4", "4"),
        ("</think>\n\n\n4\n", "4\n"),  # leading newlines dropped, the rest kept
        ("</think> \n4", " \n4"),  # only newlines
        ("<think>a</think>b</think>\nc", "c"),  # the text after the last </think>
        ("<think>\nunterminated", "<think>\nunterminated"),  # no </think>: unchanged
        ("<think>x</think>", ""),
    ],
)
def test_strip_reasoning_keeps_what_follows_the_last_close(content: str, stripped: str) -> None:
    assert strip_reasoning(content) == stripped


@pytest.mark.parametrize(
    ("text", "reasoning", "answer"),
    [
        ("42", "", "42"),  # no think block: all answer
        ("", "", ""),
        ("<think>\n6*7\n</think>\n\n42", "6*7", "42"),
        ("<think>\n\n</think>\n\n42", "", "42"),  # an empty block
        ("<think></think>42", "", "42"),
        ("<think>\nhalf a thought", "half a thought", ""),  # unterminated: no answer
        ("6*7\n</think>\n\n42", "6*7", "42"),  # the prompt opened the block
        ("<think>\na</think>b</think>\n\nc", "a</think>b", "c"),  # the last </think> ends the block
        ("<think>\nx\n</think>\n\n\n42\n", "x", "42\n"),  # leading newlines of the answer dropped
    ],
)
def test_split_reasoning_of_a_generated_text(text: str, reasoning: str, answer: str) -> None:
    assert split_reasoning(text) == (reasoning, answer)


def test_several_assistant_turns_lose_their_reasoning_as_the_chat_template_does() -> None:
    """Each earlier assistant turn keeps only its answer; the chat template of the model kit's
    tokenizer (Qwen3's, trimmed) renders the conversation the same way."""
    jinja2 = pytest.importorskip("jinja2")
    pytest.importorskip("transformers")
    from edgecloud.modelkit.tokenizer import CHAT_TEMPLATE

    turns = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "1+1"},
        {"role": "assistant", "content": f"{THINK_START}\n1+1=2\n{THINK_END}\n\n2"},
        {"role": "user", "content": "2+2"},
        {"role": "assistant", "content": f"{THINK_START}a{THINK_END}b{THINK_END}\n4"},
        {"role": "user", "content": "3+3"},
        {"role": "assistant", "content": "6"},
        {"role": "user", "content": f"why {THINK_END}\n?"},  # a user's text is never stripped
    ]
    stripped = [
        {**t, "content": strip_reasoning(t["content"]) if t["role"] == "assistant" else t["content"]} for t in turns
    ]
    assert [t["content"] for t in stripped if t["role"] == "assistant"] == ["2", "4", "6"]
    template = jinja2.Environment().from_string(CHAT_TEMPLATE)
    rendered = template.render(messages=turns, add_generation_prompt=True)
    assert rendered == "".join(f"<|im_start|>{t['role']}\n{t['content']}<|im_end|>\n" for t in stripped) + (
        "<|im_start|>assistant\n"
    )
    off = template.render(messages=turns[:2], add_generation_prompt=True, enable_thinking=False)
    assert off.endswith(f"<|im_start|>assistant\n{THINK_START}\n\n{THINK_END}\n\n")
