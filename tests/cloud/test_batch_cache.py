"""The engine's running batch: one left-padded cache that grows in place, rows joining (merged,
padded on the left) and leaving (rebuilt from the rows kept). Checked on a tiny random Qwen3: each
row of a batch decodes exactly as it decodes alone."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the cloud's model backend needs torch")
from transformers import DynamicCache, Qwen3ForCausalLM

from edgecloud.cloud.batch_cache import Batch, GrowingCache, merge_batches
from edgecloud.modelkit.tokenizer import build_tokenizer
from tests.helpers.cloud import tiny_qwen3_config

ATOL = 1e-4


@pytest.fixture(scope="module")
def model() -> Qwen3ForCausalLM:
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    return Qwen3ForCausalLM(tiny_qwen3_config(tokenizer, max_position_embeddings=256)).eval()


def prefill(model: Qwen3ForCausalLM, prompts: list[list[int]], rows: list[str]) -> Batch:
    """A new batch as the engine makes one: prompts left-padded, the padding masked out."""
    width = max(map(len, prompts))
    input_ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, ids in enumerate(prompts):
        input_ids[i, width - len(ids) :] = torch.tensor(ids)
        mask[i, width - len(ids) :] = 1
    cache = GrowingCache()
    with torch.no_grad():
        logits = model(
            input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            past_key_values=cache, use_cache=True,
        ).logits[:, -1]  # fmt: skip
    return Batch(rows, cache, mask, torch.tensor([len(p) for p in prompts]), logits)


def step(model: Qwen3ForCausalLM, batch: Batch, tokens: list[int]) -> None:
    """One decode step of every row, writing into the batch's cache."""
    batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.rows), 1))], dim=1)
    with torch.no_grad():
        batch.next_logits = model(
            input_ids=torch.tensor(tokens)[:, None], attention_mask=batch.mask, position_ids=batch.positions[:, None],
            past_key_values=batch.cache, use_cache=True,
        ).logits[:, -1]  # fmt: skip
    batch.positions = batch.positions + 1


def alone(model: Qwen3ForCausalLM, ids: list[int]) -> torch.Tensor:
    """The next-token logits of ``ids`` read on their own, without any cache."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1]


PROMPTS = {"short": [5, 6, 7], "long": [8, 9, 10, 11, 12, 13, 14], "mid": [15, 16, 17, 18, 19]}


def test_the_growing_cache_decodes_as_the_concatenating_one(model: Qwen3ForCausalLM) -> None:
    # Past its first capacity (64 positions) it grows, copying what it holds: 90 steps cross it.
    ids = PROMPTS["long"]
    growing, dynamic = GrowingCache(), DynamicCache()
    with torch.no_grad():
        a = model(input_ids=torch.tensor([ids]), past_key_values=growing, use_cache=True).logits[0, -1]
        b = model(input_ids=torch.tensor([ids]), past_key_values=dynamic, use_cache=True).logits[0, -1]
        for _ in range(90):
            token = int(b.argmax())
            a = model(input_ids=torch.tensor([[token]]), past_key_values=growing, use_cache=True).logits[0, -1]
            b = model(input_ids=torch.tensor([[token]]), past_key_values=dynamic, use_cache=True).logits[0, -1]
            assert torch.allclose(a, b, atol=ATOL)
    assert growing.get_seq_length() == dynamic.get_seq_length() == len(ids) + 90
    for mine, theirs in zip(growing.layers, dynamic.layers, strict=True):
        assert mine.keys.shape == theirs.keys.shape and torch.equal(mine.keys, theirs.keys)
        assert torch.equal(mine.values, theirs.values)


def test_a_cache_made_from_layers_holds_them(model: Qwen3ForCausalLM) -> None:
    batch = prefill(model, [PROMPTS["mid"]], ["mid"])
    layers = [(layer.keys.clone(), layer.values.clone()) for layer in batch.cache.layers]
    copy = GrowingCache(layers)
    assert len(copy.layers) == len(layers) and copy.get_seq_length() == len(PROMPTS["mid"])
    for layer, (keys, values) in zip(copy.layers, layers, strict=True):
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)
    assert GrowingCache().get_seq_length() == 0


def test_rows_that_join_a_running_batch_decode_as_they_would_alone(model: Qwen3ForCausalLM) -> None:
    # A batch of one row runs a few steps; two rows with prompts of other lengths join it.
    running = prefill(model, [PROMPTS["short"]], ["short"])
    generated = {"short": list(PROMPTS["short"]), "long": list(PROMPTS["long"]), "mid": list(PROMPTS["mid"])}
    for _ in range(3):
        token = int(running.next_logits[0].argmax())
        generated["short"].append(token)
        step(model, running, [token])
    joining = prefill(model, [PROMPTS["long"], PROMPTS["mid"]], ["long", "mid"])
    merged = merge_batches(running, joining)

    assert merged.rows == ["short", "long", "mid"]  # the running rows first, in their order
    width = max(running.mask.shape[1], joining.mask.shape[1])
    assert merged.mask.shape == (3, width) and merged.cache.get_seq_length() == width
    assert merged.mask.sum(1).tolist() == [len(generated[r]) for r in merged.rows]  # padding masked out
    assert merged.positions.tolist() == [len(generated[r]) for r in merged.rows]
    for i, row in enumerate(merged.rows):
        assert torch.allclose(merged.next_logits[i], alone(model, generated[row]), atol=ATOL), row

    for _ in range(4):  # and they keep decoding as they would alone
        tokens = [int(logits.argmax()) for logits in merged.next_logits]
        for row, token in zip(merged.rows, tokens, strict=True):
            generated[row].append(token)
        step(model, merged, tokens)
        for i, row in enumerate(merged.rows):
            assert torch.allclose(merged.next_logits[i], alone(model, generated[row]), atol=ATOL), row


def test_a_batch_rebuilt_from_the_rows_kept_decodes_as_they_would_alone(model: Qwen3ForCausalLM) -> None:
    batch = merge_batches(
        prefill(model, [PROMPTS["long"]], ["long"]),
        prefill(model, [PROMPTS["short"], PROMPTS["mid"]], ["short", "mid"]),
    )
    generated = {row: list(PROMPTS[row]) for row in batch.rows}
    tokens = [int(logits.argmax()) for logits in batch.next_logits]
    for row, token in zip(batch.rows, tokens, strict=True):
        generated[row].append(token)
    step(model, batch, tokens)

    # "long" finishes: the others stay, their cache rebuilt without it and the columns nobody uses.
    keep = torch.tensor([1, 2])
    start = int(batch.mask[keep].any(0).int().argmax())
    assert start == len(PROMPTS["long"]) - len(PROMPTS["mid"])  # the left padding only "long" needed
    kept = Batch(
        [batch.rows[i] for i in keep.tolist()],
        GrowingCache([(layer.keys[keep, :, start:], layer.values[keep, :, start:]) for layer in batch.cache.layers]),
        batch.mask[keep][:, start:], batch.positions[keep], batch.next_logits[keep],
    )  # fmt: skip
    for _ in range(70):  # long enough for the rebuilt cache to grow
        tokens = [int(logits.argmax()) for logits in kept.next_logits]
        for row, token in zip(kept.rows, tokens, strict=True):
            generated[row].append(token)
        step(model, kept, tokens)
    for i, row in enumerate(kept.rows):
        assert torch.allclose(kept.next_logits[i], alone(model, generated[row]), atol=ATOL), row
