"""The student of a dataset: the prompt it reads, its targets (the teacher's label, or an
abstention where the teacher is wrong), its batches, and a short run of its training on tiny
models (the shape it takes, its answer length, its features)."""

from __future__ import annotations

import logging
import math

import pytest

torch = pytest.importorskip("torch")
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerFast

from edgecloud.edge.runtime import MAX_NEW_TOKENS
from edgecloud.modelkit.arithmetic.teacher import ModelSpec, build_model
from edgecloud.modelkit.data.datasets import Row
from edgecloud.modelkit.data.student import (
    STUDENT_PROMPT,
    DataStudentRecipe,
    RowStudentData,
    prompt_template_for,
    student_targets,
    train_data_student,
)
from edgecloud.modelkit.tokenizer import build_data_tokenizers, build_tokenizer
from edgecloud.modelkit.training import TrainConfig

TINY = ModelSpec(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
    max_position_embeddings=32,
)  # fmt: skip
WORDS = ("amber", "basil", "cedar", "delta", "ember")


def test_the_recipe_is_checked() -> None:
    with pytest.raises(ValueError, match="'{query}'"):
        DataStudentRecipe(prompt_template="question:")
    with pytest.raises(ValueError, match="max_new_tokens"):
        DataStudentRecipe(max_new_tokens=MAX_NEW_TOKENS + 1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        DataStudentRecipe(max_new_tokens=-1)
    assert DataStudentRecipe(max_new_tokens=MAX_NEW_TOKENS).max_new_tokens == MAX_NEW_TOKENS


def test_the_prompt_is_the_student_s_own_or_its_chat_template_without_thinking() -> None:
    chat = build_tokenizer()  # a chat template, <think> tokens
    assert prompt_template_for(chat, built_here=True) == STUDENT_PROMPT
    rendered = prompt_template_for(chat, built_here=False)
    assert rendered.startswith("<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n")
    assert rendered.endswith("<think>\n\n</think>\n\n")  # thinking disabled: the empty block pre-filled
    _, built_before = build_data_tokenizers(["turn on the lamp"])  # no template, <|im_start|> among its tokens
    assert built_before.chat_template is None
    assert prompt_template_for(built_before, built_here=False) == STUDENT_PROMPT
    core = Tokenizer(WordLevel(vocab={"<unk>": 0, "</s>": 1, "lamp": 2}, unk_token="<unk>"))
    core.pre_tokenizer = WhitespaceSplit()
    plain = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="</s>")
    assert prompt_template_for(plain, built_here=False) == "{query}\n"


def test_the_student_abstains_where_the_teacher_is_wrong() -> None:
    rows = [Row(query="q1", answer='{"a": 1}'), Row(query="q2", answer='{"a": 2}'), Row(query="q3", answer="")]
    labels = ['{"a":1.0}', '{"a":3}', "anything"]
    assert student_targets(rows, labels, "json") == ['{"a":1.0}', "", "anything"]


def test_targets_follow_the_dataset_s_rule() -> None:
    rows = [Row(query="q1", answer="Cedar"), Row(query="q2", answer="12")]
    assert student_targets(rows, ["cedar ", "12.0"], "exact") == ["cedar ", ""]  # exact: case and spaces fold
    assert student_targets(rows, ["cedar ", "12.0"], "number") == ["", "12.0"]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    _, student = build_data_tokenizers([f"reverse {w} {w[::-1]} x" for w in WORDS], lowercase=True)
    return student


def test_batches_group_similar_lengths_with_the_loss_on_the_targets(tokenizer: PreTrainedTokenizerFast) -> None:
    short = [(f"reverse {w}", w[::-1]) for w in WORDS]
    long = [(f"reverse {w} " * 6, (w[::-1] + " ") * 4) for w in WORDS]
    prompts = [STUDENT_PROMPT.replace("{query}", q) for q, _ in short + long]
    targets = [t for _, t in short + long]
    data = RowStudentData(tokenizer, prompts, targets, batch_size=4, seed=0)
    eos = tokenizer.eos_token_id
    target_ids = tokenizer([f"{t}{tokenizer.eos_token}" for t in targets], add_special_tokens=False)["input_ids"]
    assert data.longest_target == max(map(len, target_ids))
    lengths = {
        len(p) + len(t)
        for p, t in zip(tokenizer(prompts, add_special_tokens=False)["input_ids"], target_ids, strict=True)
    }
    batches = [data.batch(step) for step in range(RowStudentData.POOL_BATCHES)]  # one pool
    mixed = 0
    for batch in batches:
        rows = batch["attention_mask"].sum(1).tolist()
        assert set(rows) <= lengths
        mixed += len({n > min(lengths) * 2 for n in rows}) > 1
        labelled = batch["labels"] != -100
        assert (labelled.sum(1) == torch.tensor([len(t) for t in _targets_of(batch, eos)])).all()
        assert (batch["labels"][labelled] == batch["input_ids"][labelled]).all()
    assert mixed <= 1, "short and long rows share at most the batch where the sorted pool turns"
    again = RowStudentData(tokenizer, prompts, targets, batch_size=4, seed=0)
    assert all(torch.equal(again.batch(i)["input_ids"], b["input_ids"]) for i, b in enumerate(batches))


def _targets_of(batch: dict[str, torch.Tensor], eos: int) -> list[list[int]]:
    """Each row's labelled tokens: its target, ending with the end token."""
    targets = [[t for t in row.tolist() if t != -100] for row in batch["labels"]]
    assert all(t and t[-1] == eos for t in targets)
    return targets


def test_a_fresh_student_takes_the_shape_its_data_needs(tokenizer: PreTrainedTokenizerFast, caplog) -> None:
    queries = [f"reverse {w}" for w in WORDS] * 2
    targets = [w[::-1] for w in WORDS] + [""] * 5  # half abstain
    recipe = DataStudentRecipe(model=TINY, train=TrainConfig(steps=3, batch_size=4, warmup=1), eval_every=0)
    student, settled, history = train_data_student(None, tokenizer, recipe, queries, targets, seed=0, rule="exact")
    longest = max(len(tokenizer(f"{t}{tokenizer.eos_token}", add_special_tokens=False)["input_ids"]) for t in targets)
    # The longest answer and a quarter more (and two), within the edge's limit.
    assert settled.max_new_tokens == min(MAX_NEW_TOKENS, math.ceil(longest * 5 / 4) + 2)
    prompt = max(
        len(tokenizer(STUDENT_PROMPT.replace("{query}", q), add_special_tokens=False)["input_ids"]) for q in queries
    )
    positions = student.config.max_position_embeddings
    assert positions >= 2 * (prompt + settled.max_new_tokens) and positions % 64 == 0  # grown from 32
    assert [record["step"] for record in history] == [3]
    ids = tokenizer(STUDENT_PROMPT.replace("{query}", "reverse amber"), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        features = student(input_ids=ids["input_ids"]).features
    assert features.shape == (1, TINY.hidden_size)  # the edge's features: centred and rotated on the queries
    assert student.config.feature_centre is not None and student.config.feature_rotation is not None
    assert student.generation_config.eos_token_id == tokenizer.eos_token_id
    assert student.generation_config.pad_token_id == tokenizer.pad_token_id

    # A given student is trained in place, its shape as it was; a limit below the longest answer is warned of.
    given = build_model(TINY, tokenizer, seed=1)
    capped = DataStudentRecipe(model=TINY, train=TrainConfig(steps=1, batch_size=4), eval_every=0, max_new_tokens=2)
    with caplog.at_level(logging.WARNING, logger="edgecloud.modelkit.data.student"):
        trained, kept, _ = train_data_student(given, tokenizer, capped, queries, targets, seed=0, rule="exact")
    assert trained is given and trained.config.max_position_embeddings == 32 and kept.max_new_tokens == 2
    assert f"the longest target is {longest} tokens, the edge generates at most 2" in caplog.text
