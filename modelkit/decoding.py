"""Batched greedy decoding for the model kit, with reasoning-budget forcing.

When a sequence's reasoning reaches its budget, ``</think>`` is forced as its
next token and decoding goes on to the answer, as the cloud engine does.
Reasoning tokens are the tokens strictly between ``<think>`` and ``</think>``; each sequence's
:class:`~edgecloud.shared.reasoner.thinking.ThinkTracker` counts them and reads the tags wherever
they appear (a model is measured as it is).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerFast

from edgecloud.shared.reasoner.thinking import THINK_END, THINK_START, Phase, ThinkTracker

__all__ = ["Generation", "generate_batch"]


@dataclass(frozen=True, slots=True)
class Generation:
    text: str
    """Everything generated after the prompt, special tokens included."""
    answer_text: str
    """The text after ``</think>`` (or all of it when no think block), without specials."""
    reasoning_tokens: int
    output_tokens: int
    forced: bool
    """True when the budget forced ``</think>``."""
    answer_confidence: float = field(default=float("nan"), compare=False)
    """Lowest probability the model gave one of its answer tokens (end-of-turn included); NaN
    when there is no answer. Not compared: padding moves it in the last bits."""


@torch.no_grad()
def _left_padded(encoded: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's input ids, left padded with ``pad``, and their attention mask."""
    width = max(map(len, encoded))
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        mask[row, width - len(ids) :] = 1
    return input_ids, mask


def _tracker(ids: list[int], think_start: int, think_end: int, eos: int, budget: int | None) -> ThinkTracker:
    """The think-block tracker of one prompt's generation."""
    # A prompt that pre-fills the think block (thinking disabled) starts outside it.
    return ThinkTracker(
        think_start,
        think_end,
        eos=eos,
        budget=budget,
        phase=Phase.INSIDE if ids.count(think_start) > ids.count(think_end) else Phase.BEFORE,
        tags_anywhere=True,
    )


def _generation(tokenizer, tracker: ThinkTracker, ids: list[int], logprobs: list[float], eos: int) -> Generation:
    """One row's generated ids as a :class:`Generation`: its text, answer and confidence."""
    text = tokenizer.decode(ids, skip_special_tokens=False)
    answer_ids = tracker.answer(ids)
    answer = tokenizer.decode(answer_ids, skip_special_tokens=True).strip()
    output_tokens = len([t for t in answer_ids if t != eos])
    answer_logprobs = logprobs[len(ids) - len(answer_ids) :] if answer_ids else []
    confidence = math.exp(min(answer_logprobs)) if answer_logprobs else float("nan")
    return Generation(text, answer, tracker.reasoning_tokens, output_tokens, tracker.forced, confidence)


def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    prompts: list[str],
    *,
    max_new_tokens: int = 200,
    reasoning_budget: int | None = None,
) -> list[Generation]:
    """Greedy-decode ``prompts`` together (left padded), one KV cache for the batch."""
    if not prompts:
        return []
    think_start = tokenizer.convert_tokens_to_ids(THINK_START)
    think_end = tokenizer.convert_tokens_to_ids(THINK_END)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    n = len(prompts)
    input_ids, mask = _left_padded(encoded, pad)
    trackers = [_tracker(ids, think_start, think_end, eos, reasoning_budget) for ids in encoded]
    done = [False] * n
    out: list[list[int]] = [[] for _ in range(n)]
    out_logprobs: list[list[float]] = [[] for _ in range(n)]
    cache = DynamicCache()
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache).logits
    next_logits = logits[:, -1]
    for _ in range(max_new_tokens):
        # One conversion per step, not one tensor index per row: this loop runs for every token.
        picked = next_logits.argmax(-1).tolist()
        tokens = [pad if done[row] else trackers[row].choose(t) for row, t in enumerate(picked)]
        token = torch.tensor(tokens, dtype=torch.long, device=next_logits.device)
        chosen = torch.log_softmax(next_logits.float(), dim=-1).gather(1, token[:, None]).squeeze(1)
        for row, (token_id, logprob) in enumerate(zip(tokens, chosen.tolist())):
            if not done[row]:
                out[row].append(token_id)
                out_logprobs[row].append(logprob)
                trackers[row].push(token_id)
                done[row] = token_id == eos
        if all(done):
            break
        # Finished rows keep attending to something harmless; their outputs are ignored.
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype)], dim=1)
        position_ids = position_ids[:, -1:] + 1
        next_logits = model(
            input_ids=token[:, None], attention_mask=mask, position_ids=position_ids, past_key_values=cache
        ).logits[:, -1]
    return [_generation(tokenizer, tracker, out[row], out_logprobs[row], eos) for row, tracker in enumerate(trackers)]
