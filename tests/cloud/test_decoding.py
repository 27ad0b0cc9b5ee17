"""``edgecloud.cloud.decoding``: one row of the engine's batch, token by token, with a character
tokenizer (one token a character, ``<think>`` 1, ``</think>`` 2, the end token 3) and no model."""

from __future__ import annotations

from typing import Any

import torch

from edgecloud.cloud.decoding import Detokenizer, Row, RowDecoder, Sampler, emit
from edgecloud.cloud.engine import EngineConfig, EngineEvent, EngineEventKind, Job, Resume
from edgecloud.shared.reasoner.session import Sampling

THINK_START_ID, THINK_END_ID, EOS = 1, 2, 3
K = EngineEventKind


class CharTokenizer:
    """Just what the decoder asks of a Hugging Face tokenizer."""

    eos_token_id = EOS

    def convert_tokens_to_ids(self, token: str) -> int:
        return {"<think>": THINK_START_ID, "</think>": THINK_END_ID}[token]

    def apply_chat_template(self, messages: list[dict[str, str]], **_: Any) -> str:
        return "".join(m["content"] for m in messages)

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids if i > EOS)


def decoder(max_positions: int = 1000, **config: Any) -> RowDecoder:
    return RowDecoder(CharTokenizer(), EngineConfig(**config), Sampling(temperature=0.0, top_p=1.0), max_positions)  # type: ignore[arg-type]


def job(events: list[EngineEvent], *, budget: int = 2, stream: bool = True, **fields: Any) -> Job:
    return Job("s1", "hi", budget, 8, stream, events.append, **fields)


def play(rows: RowDecoder, row: Row, text: str) -> None:
    """Feed each character (``<`` and ``>`` stand for ``<think>`` and ``</think>``, ``$`` for the end)."""
    special = {"<": THINK_START_ID, ">": THINK_END_ID, "$": EOS}
    for position, char in enumerate(text, start=row.prompt_tokens):
        rows.advance(row, special.get(char, ord(char)), position)


def test_a_row_spends_its_budget_then_the_close_is_forced() -> None:
    events: list[EngineEvent] = []
    rows = decoder()
    row, prompt = rows.new_row(job(events, budget=2), now=0.0)
    assert prompt == [ord("h"), ord("i")]
    play(rows, row, "<abc4$")  # "c" would be a third reasoning token: </think> replaces it
    assert row.done and row.finish_reason == "stop"
    assert row.think.reasoning_tokens == 2 and row.think.forced
    rows.finish(row)
    assert [e.kind for e in events] == [K.REASONING_DELTA, K.REASONING_DELTA, K.ANSWER_DELTA, K.FINISHED]
    result = events[-1].result
    assert result is not None
    assert (result.answer, result.reasoning, result.budget_reached) == ("4", "ab", True)
    assert (result.usage.reasoning_tokens, result.usage.output_tokens) == (2, 4)  # <think>, </think>, 4, end


def test_hidden_reasoning_is_reported_as_progress_with_its_text() -> None:
    events: list[EngineEvent] = []
    rows = decoder(progress_every=2)
    row, _ = rows.new_row(job(events, budget=8, stream=False), now=0.0)
    play(rows, row, "<abc>")
    assert [(e.kind, e.reasoning_tokens, e.text) for e in events] == [
        (K.REASONING_PROGRESS, 2, "ab"),
        (K.REASONING_PROGRESS, 3, "c"),
    ]


def test_the_answer_stops_at_its_output_limit() -> None:
    events: list[EngineEvent] = []
    rows = decoder()
    row, _ = rows.new_row(Job("s1", "hi", 0, 2, True, events.append), now=0.0)
    play(rows, row, "xy")
    assert row.done and row.finish_reason == "length"


def test_a_resumed_row_is_prefilled_with_its_past_and_counts_on() -> None:
    events: list[EngineEvent] = []
    rows = decoder()
    resume = Resume(reasoning="ab", answer="4", reasoning_tokens=2, answer_tokens=1)
    row, ids = rows.new_row(job(events, budget=8, resume=resume), now=0.0)
    assert ids == [ord("h"), ord("i"), THINK_START_ID, ord("\n"), ord("a"), ord("b")] + [
        ord("\n"),
        THINK_END_ID,
        ord("\n"),
        ord("\n"),
        ord("4"),
    ]
    assert (row.think.reasoning_tokens, row.answer_tokens, row.output_tokens) == (2, 1, 3)
    play(rows, row, "2$")
    assert [e.text for e in events] == ["2"]  # only what follows the past
    assert row.answer.text() == "42"


def test_a_prompt_over_the_limit_or_a_past_with_no_room_is_refused() -> None:
    rows = decoder(max_positions=8, max_input_tokens=4)
    long, _ = rows.new_row(Job("s1", "hello", 0, 8, True, lambda e: None), now=0.0)
    refused = rows.refusal(long, 5)
    assert refused is not None and refused[0] == "INVALID_ARGUMENT"
    short, _ = rows.new_row(Job("s2", "hi", 0, 8, True, lambda e: None), now=0.0)
    assert rows.refusal(short, 2) is None
    refused = rows.refusal(short, 7)
    assert refused is not None and refused[0] == "RESUME_FAILED"
    assert "take 7 tokens; the model reads at most 7" in refused[1]


def test_a_failing_listener_is_logged_not_raised() -> None:
    def broken(event: EngineEvent) -> None:
        raise RuntimeError("listener bug")

    row, _ = decoder().new_row(Job("s1", "hi", 0, 8, True, broken), now=0.0)
    emit(row, K.STARTED)


def test_the_detokenizer_holds_back_an_incomplete_character() -> None:
    class Bytes(CharTokenizer):
        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            return bytes(ids).decode("utf-8", errors="replace")

    detok = Detokenizer(Bytes(), lstrip=False)  # type: ignore[arg-type]
    first, second = "é".encode()
    assert detok.push(first) == ""
    assert detok.push(second) == "é"


def test_a_seeded_sampler_repeats_and_a_tiny_top_p_is_greedy() -> None:
    logits = torch.tensor([0.0, 1.0, 3.0, 2.0])
    first, second = Sampler(Sampling(temperature=1.0, seed=7)), Sampler(Sampling(temperature=1.0, seed=7))
    assert [first.pick(logits) for _ in range(10)] == [second.pick(logits) for _ in range(10)]
    sampler = Sampler(Sampling(temperature=1.0, top_p=1e-6, seed=1))
    assert not sampler.greedy and {sampler.pick(logits) for _ in range(20)} == {2}
    assert Sampler(Sampling(temperature=0.0)).greedy
