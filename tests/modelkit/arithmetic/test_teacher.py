"""The teacher's training examples and its refine stage's data."""

from __future__ import annotations

import random

import pytest

from edgecloud.modelkit.arithmetic.scratchpad import think_text
from edgecloud.modelkit.arithmetic.task import make_problem
from edgecloud.modelkit.arithmetic.teacher import RefineStage, TeacherData, TeacherRecipe, teacher_example
from edgecloud.modelkit.tokenizer import build_tokenizer


def test_answer_mode_reads_the_whole_scratchpad_and_targets_the_answer() -> None:
    tokenizer = build_tokenizer()
    problem = make_problem(3, random.Random(4))
    context, target = teacher_example(problem, tokenizer, mode="answer", rng=random.Random(0))
    assert context.endswith(f"<think>\n{think_text(problem)}</think>\n\n")
    assert target == f"{problem.answer}<|im_end|>"


def test_refine_stage_draws_its_own_mix_and_answer_examples() -> None:
    tokenizer = build_tokenizer()
    recipe = TeacherRecipe()
    stage = RefineStage(mix={4: 1.0}, answer_share=0.5)
    data = TeacherData(tokenizer, recipe, seed=0, stage=stage)
    modes = [data._mode() for _ in range(400)]
    assert 0.4 < modes.count("answer") / len(modes) < 0.6
    batch = data.batch(0)
    assert batch["input_ids"].shape[0] == stage.train.batch_size
    # Every example is k=4: the user's query has four operators.
    texts = tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=False)
    queries = [t.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0] for t in texts]
    assert all(sum(q.count(op) for op in "+-*") == 4 for q in queries), queries[:3]


def test_first_stage_draws_one_number_per_example() -> None:
    """The first stage's random stream is the one the shipped teacher was trained on:
    one draw per example picks its mode (no draw for the refine stage's answer mode)."""
    recipe = TeacherRecipe()
    data = TeacherData(build_tokenizer(), recipe, seed=0)
    reference = random.Random("edgecloud-teacher-data/TRAIN/0")
    expected = []
    for _ in range(300):
        r = reference.random()
        no_think, truncated = recipe.no_think_share, recipe.no_think_share + recipe.truncated_share
        expected.append("direct" if r < no_think else "truncated" if r < truncated else "think")
    assert [data._mode() for _ in range(300)] == expected


def test_refine_stage_validates() -> None:
    with pytest.raises(ValueError, match="answer_share"):
        RefineStage(answer_share=1.5)
