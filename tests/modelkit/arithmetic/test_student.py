"""The student's training data: teacher-labelled pool, its own prompt, loss on the answer only."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from edgecloud.modelkit.arithmetic import student as student_module
from edgecloud.modelkit.arithmetic.student import (
    LabelledQuery,
    StudentData,
    StudentRecipe,
    _cached_labels,
    cached_teacher_labels,
    select_labels,
    student_prompt,
)
from edgecloud.modelkit.arithmetic.task import make_problem
from edgecloud.modelkit.arithmetic.teacher import ModelSpec, build_model
from edgecloud.modelkit.tokenizer import build_student_tokenizer, build_tokenizer


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


# --- teacher labels: selection and cache ---------------------------------------------------


def test_unsure_or_empty_labels_are_not_trained_on() -> None:
    rng = random.Random(1)
    problems = [make_problem(k, rng) for k in (1, 1, 1, 2, 3, 3, 4)]
    labels = [("7", 0.99), ("8", 0.4), ("", float("nan")), ("9", 0.95), ("10", 0.2), ("12", 0.6), ("11", 0.9)]
    pool = select_labels(problems, labels, StudentRecipe(label_min_confidence=0.5, abstain_k=()))
    assert [q.answer for q in pool[1]] == ["7"] and pool[1][0].confidence == 0.99
    assert [[q.answer for q in pool[k]] for k in (2, 3, 4)] == [["9"], ["12"], ["11"]]
    # With no threshold only the empty answer goes.
    assert sum(map(len, select_labels(problems, labels, StudentRecipe(abstain_k=())).values())) == 6
    # A k of the mix with nothing left to train on stops the build, before training.
    with pytest.raises(RuntimeError, match=r"k=\[3\]"):
        select_labels(problems, labels, StudentRecipe(label_min_confidence=0.7, abstain_k=()))


def test_multi_step_queries_are_trained_to_abstain() -> None:
    rng = random.Random(3)
    problems = [make_problem(k, rng) for k in (1, 1, 2, 3, 4)]
    labels = [("7", 0.99), ("8", 0.95), ("", 1.0), ("", 1.0), ("", 1.0)]
    recipe = StudentRecipe(mix={1: 0.5, 2: 0.2, 3: 0.2, 4: 0.1}, abstain_k=(2, 3, 4))
    pool = select_labels(problems, labels, recipe)
    # The empty answer is kept for the k the student abstains on, not dropped as "no answer".
    assert [len(pool[k]) for k in (1, 2, 3, 4)] == [2, 1, 1, 1]
    tokenizer = build_student_tokenizer()
    data = StudentData(tokenizer, recipe, pool, seed=0)
    for k in (2, 3, 4):
        ((prompt, target),) = data.encoded[k]
        assert target == [tokenizer.eos_token_id] and tokenizer.decode(prompt).endswith("=")
    assert data.encoded[1][0][1][-1] == tokenizer.eos_token_id and len(data.encoded[1][0][1]) > 1
    # Without abstention the same empty labels are dropped and k=2..4 have nothing to train on.
    with pytest.raises(RuntimeError, match=r"k=\[2, 3, 4\]"):
        select_labels(problems, labels, StudentRecipe(mix=recipe.mix, abstain_k=()))


def test_recipe_keeps_some_queries_answered() -> None:
    with pytest.raises(ValueError, match="abstain_k"):
        StudentRecipe(mix={1: 0.5, 2: 0.5}, label_queries={1: 10, 2: 10}, abstain_k=(1, 2))
    with pytest.raises(ValueError, match="abstain_k"):
        StudentRecipe(abstain_k=(5,))


def test_recipe_rejects_a_confidence_threshold_out_of_range() -> None:
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="label_min_confidence"):
            StudentRecipe(label_min_confidence=bad)


@pytest.fixture(scope="module")
def tiny_teacher():
    tokenizer = build_tokenizer()
    spec = ModelSpec(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1
    )
    return build_model(spec, tokenizer, seed=0).eval(), tokenizer


def test_labels_are_cached_per_teacher_and_query(tiny_teacher, tmp_path, caplog) -> None:
    teacher, tokenizer = tiny_teacher
    rng = random.Random(2)
    problems = [make_problem(1, rng) for _ in range(5)]
    recipe = StudentRecipe()
    first = _cached_labels(teacher, tokenizer, problems[:4], recipe, tmp_path)
    (cache_file,) = tmp_path.glob("teacher-labels-*.json")
    # What the cache holds is what the next build gets back, without the teacher running.
    stored = json.loads(cache_file.read_text())
    assert [stored[p.query][0] for p in problems[:4]] == [a for a, _ in first]
    cache_file.write_text(json.dumps({query: ["cached", 0.5] for query in stored}))
    assert _cached_labels(teacher, tokenizer, problems[:3], recipe, tmp_path) == [("cached", 0.5)] * 3
    # A pool with one new query labels only that one and keeps the rest.
    mixed = _cached_labels(teacher, tokenizer, problems, recipe, tmp_path)
    assert mixed[:4] == [("cached", 0.5)] * 4 and mixed[4][0] != "cached"
    assert len(json.loads(cache_file.read_text())) == 5
    # Another teacher has its own file.
    other_spec = ModelSpec(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1
    )
    _cached_labels(build_model(other_spec, tokenizer, seed=1).eval(), tokenizer, problems[:1], recipe, tmp_path)
    assert len(list(tmp_path.glob("teacher-labels-*.json"))) == 2
    # A damaged cache file is relabelled, not trusted.
    cache_file.write_text("{not json")
    with caplog.at_level("WARNING"):
        again = _cached_labels(teacher, tokenizer, problems[:4], recipe, tmp_path)
    assert [a for a, _ in again] == [a for a, _ in first] and "unreadable label cache" in caplog.text


def test_a_build_stopped_while_labelling_keeps_the_batches_it_finished(tiny_teacher, tmp_path, monkeypatch) -> None:
    """The cache is written as batches finish (every ``every_s``), so a stop loses at most that much."""
    teacher, tokenizer = tiny_teacher
    rng = random.Random(3)
    problems = [make_problem(1, rng) for _ in range(6)]
    real_generate = student_module.generate_batch
    calls = {"n": 0}

    def stops_on_the_third_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(student_module, "generate_batch", stops_on_the_third_batch)
    monkeypatch.setattr(student_module._LabelCacheSaver, "every_s", 0.0)
    with pytest.raises(KeyboardInterrupt):
        cached_teacher_labels(teacher, tokenizer, problems, cache_dir=tmp_path, batch_size=2, max_new_tokens=8)
    (cache_file,) = tmp_path.glob("teacher-labels-*.json")
    assert len(json.loads(cache_file.read_text())) == 4, "two finished batches of two"
    monkeypatch.setattr(student_module, "generate_batch", real_generate)
    labels = cached_teacher_labels(teacher, tokenizer, problems, cache_dir=tmp_path, batch_size=2, max_new_tokens=8)
    assert len(labels) == 6 and len(json.loads(cache_file.read_text())) == 6
