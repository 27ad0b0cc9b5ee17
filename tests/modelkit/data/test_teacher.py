"""The teacher of a dataset: what it learns from a row (its conversation, its reasoning in a think
block, then its answer), the shares of direct and truncated examples, what is left out, and a short
run of its training on a tiny model, saved as a Hugging Face folder."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from transformers import AutoModelForCausalLM, AutoTokenizer

from edgecloud.modelkit.arithmetic.teacher import ModelSpec, build_model
from edgecloud.modelkit.data.datasets import Row
from edgecloud.modelkit.data.teacher import (
    DataTeacherRecipe,
    RowTeacherData,
    conversation,
    row_example,
    teacher_answers,
    train_data_teacher,
)
from edgecloud.modelkit.tokenizer import build_data_tokenizers
from edgecloud.modelkit.training import TrainConfig

TINY = ModelSpec(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
    max_position_embeddings=64,
)  # fmt: skip
WORDS = ("amber", "basil", "cedar", "delta", "ember", "fjord")


@pytest.fixture(scope="module")
def tokenizer():
    texts = [f"reverse {w}\nletters: {' '.join(w)}\n{w[::-1]}" for w in WORDS] + ["be brief"]
    teacher, _ = build_data_tokenizers(texts, lowercase=True)
    return teacher


def rows(*, reasoning: bool = True) -> list[Row]:
    return [
        Row(query=f"reverse {w}", answer=w[::-1], reasoning=f"letters: {' '.join(w)}\n" if reasoning else None)
        for w in WORDS
    ]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"no_think_share": -0.1}, "must be in"),
        ({"truncated_share": 1.5}, "must be in"),
        ({"no_think_share": 0.6, "truncated_share": 0.5}, "at most 1"),
        ({"max_tokens": 15}, "max_tokens must be >= 16"),
    ],
)
def test_the_recipe_is_checked(settings: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DataTeacherRecipe(**settings)


def test_a_row_s_conversation_is_its_messages_or_its_query() -> None:
    assert conversation(Row(query="reverse amber", answer="rebma")) == [{"role": "user", "content": "reverse amber"}]
    chat = Row(messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "amber"}], answer="x")
    assert conversation(chat) == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "amber"}]


def test_teacher_targets_hold_the_reasoning_then_the_answer() -> None:
    tokenizer, _ = build_data_tokenizers(["abc xyz", "reverse"], lowercase=True)
    rng = random.Random(0)
    row = Row(query="reverse abc", answer="cba", reasoning="a b c\n")
    context, target = row_example(row, tokenizer, mode="think", rng=rng)
    assert context.endswith("<|im_start|>assistant\n") and "reverse abc" in context
    assert target == "<think>\na b c\n</think>\n\ncba<|im_end|>"
    bare = Row(query="reverse abc", answer="cba")
    assert row_example(bare, tokenizer, mode="think", rng=rng)[1] == "<think>\n\n</think>\n\ncba<|im_end|>"
    context, target = row_example(row, tokenizer, mode="direct", rng=rng)
    assert context.endswith("<think>\n\n</think>\n\n") and target == "cba<|im_end|>"
    chat = Row(messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "abc"}], answer="cba")
    assert "<|im_start|>system\nbe brief<|im_end|>" in row_example(chat, tokenizer, mode="think", rng=rng)[0]


def test_a_truncated_example_cuts_the_reasoning_and_still_expects_the_answer(tokenizer) -> None:
    row = Row(query="reverse amber", answer="rebma", reasoning="letters: a m b e r\n")
    think_context, _ = row_example(row, tokenizer, mode="think", rng=random.Random(0))
    cuts = set()
    for seed in range(40):
        context, target = row_example(row, tokenizer, mode="truncated", rng=random.Random(seed))
        assert target == "rebma<|im_end|>"  # the loss is on the answer only
        assert context.startswith(think_context + "<think>\n") and context.endswith("</think>\n\n")
        cut = context[len(think_context) + len("<think>\n") : -len("</think>\n\n")]
        assert row.reasoning.startswith(cut) and len(cut) < len(row.reasoning)  # a strict prefix
        cuts.add(len(cut))
    assert len(cuts) > 5  # cut at a random point
    with pytest.raises(ValueError, match="unknown mode 'budget'"):
        row_example(row, tokenizer, mode="budget", rng=random.Random(0))


def modes(data: RowTeacherData, tokenizer, draws: int) -> Counter[str]:
    """How the drawn examples were made: thinking, thinking disabled, or the reasoning cut short."""
    think_start = tokenizer.convert_tokens_to_ids("<think>")
    direct_tail = tokenizer("<think>\n\n</think>\n\n", add_special_tokens=False)["input_ids"]
    seen: Counter[str] = Counter()
    for step in range(draws):
        batch = data.batch(step)
        for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
            start = int((labels != -100).nonzero()[0])
            context = ids[:start].tolist()
            if int(ids[start]) == think_start:
                seen["think"] += 1
            elif context[-len(direct_tail) :] == direct_tail:
                seen["direct"] += 1
            else:
                seen["truncated"] += 1
    return seen


def test_examples_are_drawn_in_the_recipe_s_shares(tokenizer) -> None:
    recipe = DataTeacherRecipe(no_think_share=0.3, truncated_share=0.2, train=TrainConfig(steps=1, batch_size=32))
    seen = modes(RowTeacherData(tokenizer, rows(), recipe, seed=0), tokenizer, draws=RowTeacherData.POOL_BATCHES)
    total = sum(seen.values())
    assert total == 32 * RowTeacherData.POOL_BATCHES
    assert abs(seen["direct"] / total - 0.3) < 0.06 and abs(seen["truncated"] / total - 0.2) < 0.06
    # Without reasoning there is nothing to cut: those draws think (with an empty block) instead.
    plain = modes(RowTeacherData(tokenizer, rows(reasoning=False), recipe, seed=0), tokenizer, draws=4)
    assert plain["truncated"] == 0 and plain["think"] > plain["direct"] > 0


def test_rows_without_an_answer_and_examples_too_long_are_left_out(tokenizer) -> None:
    unlabelled = Row(query="reverse basil", answer=" ")
    data = RowTeacherData(tokenizer, [*rows()[:2], unlabelled], DataTeacherRecipe(), seed=0)
    assert [r.query for r in data.rows] == ["reverse amber", "reverse basil"]
    with pytest.raises(ValueError, match="no row with an answer"):
        RowTeacherData(tokenizer, [unlabelled], DataTeacherRecipe(), seed=0)
    longest = data.longest()
    context, target = row_example(data.rows[0], tokenizer, mode="think", rng=random.Random(0))
    assert longest == len(tokenizer(context + target, add_special_tokens=False)["input_ids"])
    tight = DataTeacherRecipe(max_tokens=16, train=TrainConfig(steps=1, batch_size=4))
    with pytest.raises(ValueError, match="longer than max_tokens"):
        RowTeacherData(tokenizer, rows(), tight, seed=0).batch(0)
    roomy = DataTeacherRecipe(
        max_tokens=longest, no_think_share=0.0, truncated_share=0.0, train=TrainConfig(steps=1, batch_size=4)
    )
    batch = RowTeacherData(tokenizer, rows(), roomy, seed=0).batch(0)
    assert batch["input_ids"].shape[1] <= longest


def test_a_teacher_trained_on_the_rows_is_saved_with_room_for_its_examples(tokenizer, tmp_path: Path) -> None:
    recipe = DataTeacherRecipe(model=TINY, train=TrainConfig(steps=4, batch_size=4, warmup=1), eval_every=2)
    checked: list[int] = []

    def on_eval(model):
        return lambda step: checked.append(step) or {"val_accuracy": 0.0}

    model, history = train_data_teacher(tokenizer, rows(), recipe, tmp_path / "teacher", seed=0, on_eval=on_eval)
    longest = RowTeacherData(tokenizer, rows(), recipe, seed=0).longest()
    positions = model.config.max_position_embeddings
    assert positions >= 2 * longest and positions % 128 == 0  # grown from 64
    assert checked == [2, 4] and history[-1]["val_accuracy"] == 0.0
    saved = AutoModelForCausalLM.from_pretrained(str(tmp_path / "teacher"))
    assert saved.config.max_position_embeddings == positions
    assert AutoTokenizer.from_pretrained(str(tmp_path / "teacher")).get_vocab() == tokenizer.get_vocab()


def test_the_teacher_s_answers_do_not_depend_on_the_batching(tokenizer) -> None:
    torch.manual_seed(0)
    teacher = build_model(TINY, tokenizer, seed=0).eval()
    asked = rows()[:5]
    one_batch = teacher_answers(teacher, tokenizer, asked, max_new_tokens=6)
    in_pairs = teacher_answers(teacher, tokenizer, asked, max_new_tokens=6, batch_size=2)
    assert len(one_batch) == 5 and one_batch == in_pairs
    assert all(g.output_tokens <= 6 for g in one_batch)
