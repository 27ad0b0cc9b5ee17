"""Greedy batched decoding with reasoning budgets, on tiny random Qwen3 models.

A freshly initialised model with tied embeddings just repeats its last input
token, so its outputs would not depend on the context at all. The fixtures
untie and rescale it so that greedy outputs vary with the prompt (which makes
the batch-versus-single comparison mean something), and :class:`Script`
overrides the logits of the special tokens so that *when* the model opens or
closes its think block, or stops, is chosen by the test.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
import torch
from transformers import PreTrainedTokenizerFast, Qwen3ForCausalLM

from edgecloud.modelkit.arithmetic.teacher import ModelSpec, build_model, chat_prompt
from edgecloud.modelkit.decoding import Generation, generate_batch
from edgecloud.modelkit.tokenizer import IM_END, build_tokenizer
from edgecloud.shared.reasoner.thinking import THINK_END, THINK_START

MAX_NEW = 40
QUERIES = ["3+4", "what is (12+34)*5-7?", "Compute 99 * 12", "1-2"]


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return build_tokenizer()


def _tiny(tok: PreTrainedTokenizerFast, layers: int) -> Qwen3ForCausalLM:
    torch.set_num_threads(1)
    spec = ModelSpec(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=1,
        num_key_value_heads=1,
        max_position_embeddings=384,
    )
    model = build_model(spec, tok, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.model.layers.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5, generator=gen)
        model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def model(tok: PreTrainedTokenizerFast) -> Qwen3ForCausalLM:
    return _tiny(tok, layers=1)


def thinking(tok: PreTrainedTokenizerFast, query: str) -> str:
    """A prompt already inside the think block."""
    return chat_prompt(tok, query, enable_thinking=True) + THINK_START + "\n"


def direct(tok: PreTrainedTokenizerFast, query: str) -> str:
    return chat_prompt(tok, query, enable_thinking=False)


@dataclass
class Script:
    """Per row, the decoding step at which the model opens ``<think>``, closes
    ``</think>`` (only if still inside the block) or emits ``<|im_end|>``; at
    every other step those three tokens are suppressed. Step ``s`` is the
    choice of the ``s``-th generated token (0-based)."""

    open_at: list[int | None]
    close_at: list[int | None]
    stop_at: list[int | None]
    ids: dict[str, int] = field(default_factory=dict)
    _step: int = 0
    _closed: list[bool] = field(default_factory=list)

    def hook(self, _module: object, _args: object, kwargs: dict[str, torch.Tensor], output: object) -> object:
        input_ids = kwargs["input_ids"]
        if self._step == 0:
            self._closed = [False] * input_ids.shape[0]
        else:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                self._closed[row] |= token == self.ids[THINK_END]
        logits = output.logits  # type: ignore[attr-defined]
        logits[:, -1, [self.ids[THINK_START], self.ids[THINK_END], self.ids[IM_END]]] = -1e4
        for row in range(logits.shape[0]):
            if self.open_at[row] == self._step:
                logits[row, -1, self.ids[THINK_START]] = 1e4
            if self.close_at[row] == self._step and not self._closed[row]:
                logits[row, -1, self.ids[THINK_END]] = 1e4
            if self.stop_at[row] == self._step:
                logits[row, -1, self.ids[IM_END]] = 1e4
        self._step += 1
        return output


@contextmanager
def scripted(
    model: Qwen3ForCausalLM,
    tok: PreTrainedTokenizerFast,
    *,
    open_at: list[int | None] | None = None,
    close_at: list[int | None] | None = None,
    stop_at: list[int | None] | None = None,
    rows: int,
) -> Iterator[Script]:
    none: list[int | None] = [None] * rows
    script = Script(open_at or none, close_at or none, stop_at or none)
    script.ids = {t: tok.convert_tokens_to_ids(t) for t in (THINK_START, THINK_END, IM_END)}
    handle = model.register_forward_hook(script.hook, with_kwargs=True)
    try:
        yield script
    finally:
        handle.remove()


def _check_invariants(g: Generation, budget: int | None, tok: PreTrainedTokenizerFast) -> None:
    if budget is not None:
        assert g.reasoning_tokens <= budget, g
    if g.forced:
        assert budget is not None and g.reasoning_tokens == budget, g
    # Output tokens are the answer's: every token generated after the last </think> (all of them
    # when the model never thought), the end-of-turn token excepted.
    if THINK_END in g.text:
        answer = g.text.rsplit(THINK_END, 1)[1]
    else:
        answer = g.text if g.reasoning_tokens == 0 else ""
    answer_ids = tok(answer.removesuffix(tok.eos_token), add_special_tokens=False)["input_ids"]
    assert g.output_tokens == len(answer_ids), g


# --- budget forcing ---------------------------------------------------------------------

# The model closes its think block by itself after this many reasoning tokens (None: never).
CLOSE_AT: list[int | None] = [None, 0, 3, 12]


@pytest.mark.parametrize("budget", [0, 1, 5, 20])
def test_budget_forces_the_think_block_closed(
    model: Qwen3ForCausalLM, tok: PreTrainedTokenizerFast, budget: int
) -> None:
    prompts = [thinking(tok, q) for q in QUERIES]
    with scripted(model, tok, close_at=CLOSE_AT, rows=len(prompts)):
        results = generate_batch(model, tok, prompts, max_new_tokens=MAX_NEW, reasoning_budget=budget)
    assert len(results) == len(prompts)
    for g, closes in zip(results, CLOSE_AT, strict=True):
        _check_invariants(g, budget, tok)
        closed_itself = closes is not None and closes <= budget
        assert g.reasoning_tokens == (closes if closed_itself else budget), g
        assert g.forced is not closed_itself, g
        assert g.text.count(THINK_END) == 1, g
        assert g.text.count(THINK_START) == 0, g
        reasoning, answer = g.text.split(THINK_END)
        assert len(tok(reasoning, add_special_tokens=False)["input_ids"]) == g.reasoning_tokens
        # No <|im_end|> scripted: decoding ran to max_new_tokens; the rest is the answer.
        assert g.output_tokens == MAX_NEW - g.reasoning_tokens - 1, g
        answer_ids = tok(answer, add_special_tokens=False)["input_ids"]
        assert g.answer_text == tok.decode(answer_ids, skip_special_tokens=True).strip()


def test_no_budget_lets_the_model_think(model: Qwen3ForCausalLM, tok: PreTrainedTokenizerFast) -> None:
    prompts = [thinking(tok, q) for q in QUERIES]
    with scripted(model, tok, close_at=CLOSE_AT, rows=len(prompts)):
        results = generate_batch(model, tok, prompts, max_new_tokens=MAX_NEW)
    for g, closes in zip(results, CLOSE_AT, strict=True):
        assert not g.forced
        if closes is None:
            # Never closed: everything is reasoning and there is no answer.
            assert (g.reasoning_tokens, g.output_tokens, g.answer_text) == (MAX_NEW, 0, ""), g
            assert THINK_END not in g.text
        else:
            assert g.reasoning_tokens == closes, g
            assert g.output_tokens == MAX_NEW - closes - 1, g


def test_budget_truncation_keeps_the_reasoning_prefix(model: Qwen3ForCausalLM, tok: PreTrainedTokenizerFast) -> None:
    """Forcing replaces one token; the reasoning before it is what the model would have written anyway."""
    prompts = [thinking(tok, q) for q in QUERIES]
    with scripted(model, tok, rows=len(prompts)):
        free = generate_batch(model, tok, prompts, max_new_tokens=MAX_NEW)
    with scripted(model, tok, rows=len(prompts)):
        cut = generate_batch(model, tok, prompts, max_new_tokens=MAX_NEW, reasoning_budget=5)
    for f, c in zip(free, cut, strict=True):
        assert c.forced and c.reasoning_tokens == 5
        assert f.text.startswith(c.text.split(THINK_END)[0])


@pytest.mark.parametrize(
    ("open_at", "close_at", "budget", "reasoning", "forced"),
    [
        (0, 4, None, 3, False),  # <think> x x x </think>
        (0, 4, 2, 2, True),
        (0, 1, 0, 0, False),  # <think></think>: empty block, closed by the model
        (2, 10, 3, 3, True),  # answers a little, then thinks: only the block counts
    ],
)
def test_model_opens_its_own_think_block(
    model: Qwen3ForCausalLM,
    tok: PreTrainedTokenizerFast,
    open_at: int,
    close_at: int,
    budget: int | None,
    reasoning: int,
    forced: bool,
) -> None:
    prompt = chat_prompt(tok, "3+4", enable_thinking=True)
    with scripted(model, tok, open_at=[open_at], close_at=[close_at], rows=1):
        (g,) = generate_batch(model, tok, [prompt], max_new_tokens=MAX_NEW, reasoning_budget=budget)
    assert (g.reasoning_tokens, g.forced) == (reasoning, forced), g
    assert g.text.count(THINK_START) == g.text.count(THINK_END) == 1, g
    # open_at tokens before <think>, the block, </think>, then the answer.
    assert g.output_tokens == MAX_NEW - open_at - 1 - reasoning - 1, g


@pytest.mark.parametrize("budget", [None, 0, 5])
def test_thinking_disabled_has_no_reasoning(
    model: Qwen3ForCausalLM, tok: PreTrainedTokenizerFast, budget: int | None
) -> None:
    prompts = [direct(tok, q) for q in QUERIES]
    with scripted(model, tok, rows=len(prompts)):
        results = generate_batch(model, tok, prompts, max_new_tokens=MAX_NEW, reasoning_budget=budget)
    for g in results:
        assert (g.reasoning_tokens, g.forced) == (0, False), g
        assert THINK_END not in g.text
        assert g.output_tokens == MAX_NEW
        text_ids = tok(g.text, add_special_tokens=False)["input_ids"]
        assert g.answer_text == tok.decode(text_ids, skip_special_tokens=True).strip()


def test_thinking_disabled_unscripted_random_model(model: Qwen3ForCausalLM, tok: PreTrainedTokenizerFast) -> None:
    prompts = [direct(tok, q) for q in QUERIES]
    results = generate_batch(model, tok, prompts, max_new_tokens=MAX_NEW, reasoning_budget=0)
    for g in results:
        assert THINK_START not in g.text, "this seed's model never opens a block by itself"
        assert (g.reasoning_tokens, g.forced) == (0, False), g
        assert THINK_END not in g.text


@pytest.mark.parametrize(
    ("stop_at", "expected"),
    [
        (5, 2),  # 2 reasoning tokens, </think> at step 2, answer at steps 3..4, <|im_end|> at 5
        (3, 0),  # <|im_end|> right after </think>
    ],
)
def test_im_end_stops_and_is_not_an_output_token(
    model: Qwen3ForCausalLM, tok: PreTrainedTokenizerFast, stop_at: int, expected: int
) -> None:
    with scripted(model, tok, close_at=[2], stop_at=[stop_at], rows=1):
        (g,) = generate_batch(model, tok, [thinking(tok, "3+4")], max_new_tokens=MAX_NEW, reasoning_budget=10)
    assert g.text.endswith(IM_END)
    assert (g.reasoning_tokens, g.output_tokens, g.forced) == (2, expected, False), g
    assert IM_END not in g.answer_text


# --- batching --------------------------------------------------------------------------


def test_empty_batch(model: Qwen3ForCausalLM, tok: PreTrainedTokenizerFast) -> None:
    assert generate_batch(model, tok, []) == []
    assert generate_batch(model, tok, [], reasoning_budget=0) == []


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("budget", [None, 5])
def test_batch_equals_single(tok: PreTrainedTokenizerFast, layers: int, budget: int | None) -> None:
    """Left padding must not change greedy outputs, reasoning counts or forcing."""
    model = _tiny(tok, layers)
    prompts = [thinking(tok, "1+1"), direct(tok, "what is (12+34)*5-7?"), thinking(tok, "Compute (99 - 3)*12 + 4 - 8?")]
    assert len({len(tok(p)["input_ids"]) for p in prompts}) == 3, "prompts of different lengths"
    batch = generate_batch(model, tok, prompts, max_new_tokens=MAX_NEW, reasoning_budget=budget)
    singles = [generate_batch(model, tok, [p], max_new_tokens=MAX_NEW, reasoning_budget=budget)[0] for p in prompts]
    assert batch == singles
    assert len({g.text for g in batch}) == len(batch), "outputs depend on the prompt"
    # Order in the batch does not matter either.
    assert generate_batch(model, tok, prompts[::-1], max_new_tokens=MAX_NEW, reasoning_budget=budget) == batch[::-1]


def test_batch_rows_stop_independently(model: Qwen3ForCausalLM, tok: PreTrainedTokenizerFast) -> None:
    prompts = [thinking(tok, q) for q in QUERIES[:3]]
    with scripted(model, tok, close_at=[1, 1, 1], stop_at=[4, None, 10], rows=3):
        batch = generate_batch(model, tok, prompts, max_new_tokens=MAX_NEW, reasoning_budget=8)
    assert [g.output_tokens for g in batch] == [2, MAX_NEW - 2, 8]
    assert [g.text.endswith(IM_END) for g in batch] == [True, False, True]
    assert all(g.reasoning_tokens == 1 and not g.forced for g in batch)


# --- a row that stops while thinking ----------------------------------------------------


@pytest.mark.parametrize("neighbour", [False, True], ids=["alone", "beside-a-longer-row"])
def test_stopping_inside_the_think_block(
    model: Qwen3ForCausalLM, tok: PreTrainedTokenizerFast, neighbour: bool
) -> None:
    # Two reasoning tokens, then <|im_end|> while still thinking; budget 3 is never reached.
    prompts = [thinking(tok, "3+4")] + ([thinking(tok, "1+1")] if neighbour else [])
    rows = len(prompts)
    with scripted(model, tok, stop_at=[2, None][:rows], rows=rows):
        g = generate_batch(model, tok, prompts, max_new_tokens=MAX_NEW, reasoning_budget=3)[0]
    assert g.text.endswith(IM_END) and THINK_END not in g.text
    assert (g.reasoning_tokens, g.forced) == (2, False), g


# --- answer confidence ------------------------------------------------------------------


def test_answer_confidence_is_the_lowest_answer_token_probability(
    model: Qwen3ForCausalLM, tok: PreTrainedTokenizerFast
) -> None:
    prompt = direct(tok, "what is 3+4?")
    (g,) = generate_batch(model, tok, [prompt], max_new_tokens=6)
    # Thinking disabled: every generated token is the answer. Replay them in one forward pass.
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    generated = tok(g.text, add_special_tokens=False)["input_ids"]
    assert len(generated) == g.output_tokens + (1 if g.text.endswith(IM_END) else 0)
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([prompt_ids + generated])).logits[0].float(), dim=-1)
    chosen = [float(probs[len(prompt_ids) + i - 1, token]) for i, token in enumerate(generated)]
    assert g.answer_confidence == pytest.approx(min(chosen), rel=1e-4)
    assert 0 < g.answer_confidence < 1


def test_no_answer_has_no_confidence(model: Qwen3ForCausalLM, tok: PreTrainedTokenizerFast) -> None:
    # Still thinking when the token limit hits: no answer, so no confidence either.
    with scripted(model, tok, rows=1):
        (g,) = generate_batch(model, tok, [thinking(tok, "3+4")], max_new_tokens=5)
    assert g.answer_text == "" and math.isnan(g.answer_confidence)
