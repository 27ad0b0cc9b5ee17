"""The student's training data: teacher-labelled pool, its own prompt, loss on the answer only."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from cloud.modelkit.student import LabelledQuery, StudentData, StudentRecipe, student_prompt
from cloud.modelkit.tokenizer import build_student_tokenizer
from shared.task import make_problem


@pytest.fixture(scope="module")
def pool() -> dict[int, list[LabelledQuery]]:
    rng = random.Random(0)
    out: dict[int, list[LabelledQuery]] = {}
    for k in (1, 2, 3, 4):
        problems = [make_problem(k, rng) for _ in range(50)]
        # The teacher's label, not the exact answer, is what the student learns.
        out[k] = [LabelledQuery(p, str(p.answer + (1 if k == 4 else 0))) for p in problems]
    return out


def test_batches_follow_the_mix_and_train_on_the_teachers_answer(pool: dict[int, list[LabelledQuery]]) -> None:
    tokenizer = build_student_tokenizer()
    recipe = StudentRecipe(mix={1: 0.7, 2: 0.1, 3: 0.1, 4: 0.1})
    data = StudentData(tokenizer, recipe, pool, seed=0)
    batch = data.batch(0)
    assert batch["input_ids"].shape[0] == recipe.train.batch_size
    eos = tokenizer.eos_token_id
    labels, rows = {}, []
    for row in range(batch["input_ids"].shape[0]):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        target = [t for t in batch["labels"][row].tolist() if t != -100]
        # The loss covers exactly the answer and its stop token, nothing of the prompt.
        assert target[-1] == eos and ids[-len(target) :] == target
        prompt = tokenizer.decode(ids[: len(ids) - len(target)])
        labels[prompt] = tokenizer.decode(target[:-1])
        rows.append(prompt)
    by_prompt = {
        tokenizer.decode(tokenizer(student_prompt(recipe, q.problem.query))["input_ids"]): q
        for queries in pool.values()
        for q in queries
    }
    ks = Counter(by_prompt[prompt].problem.k for prompt in rows)
    assert 0.55 < ks[1] / len(rows) < 0.85, ks
    for prompt, label in labels.items():
        assert prompt.endswith("=") and " " not in prompt
        assert label == by_prompt[prompt].answer


def test_recipe_validates() -> None:
    with pytest.raises(ValueError, match="query"):
        StudentRecipe(prompt_template="no placeholder")
    with pytest.raises(ValueError, match="label_queries"):
        StudentRecipe(label_queries={1: 10})
    with pytest.raises(ValueError, match="max_new_tokens"):
        StudentRecipe(max_new_tokens=0)
