"""How ``models improve`` trains: the base's replay (its confident answers and its abstentions, in
its own words, from a real onnxruntime session), batches of escalations and replay padded apart,
their loss counting every target token the same, and the progress checks by the task's groups."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForCausalLM

from edgecloud.edge.runtime import EdgeModel
from edgecloud.modelkit.arithmetic.task import Split, generate
from edgecloud.modelkit.data.datasets import Row, read_dataset, write_dataset
from edgecloud.modelkit.loop.base_task import DatasetTask
from edgecloud.modelkit.loop.improve_training import EscalationBatches, parts_loss, progress_check, replay_examples
from edgecloud.modelkit.loop.training_set import TrainingExample
from edgecloud.modelkit.tokenizer import build_student_tokenizer
from edgecloud.modelkit.training import causal_lm_loss
from tests.helpers.cloud import tiny_qwen3_config

TEMPLATE = "{query}="


@pytest.fixture(scope="module")
def base(shipped_models: Path) -> EdgeModel:
    """The shipped pair's first stage, calibrated: it answers simple queries and abstains on the others."""
    return EdgeModel.from_bundle(shipped_models / "edge-student", threads=1)


def with_threshold(model: EdgeModel, threshold: float | None) -> EdgeModel:
    calibration = None if threshold is None else replace(model.calibration, threshold=threshold)
    return EdgeModel(model.model_file, model.tokenizer_file, **model.decoding, calibration=calibration, threads=1)


def test_replay_is_the_base_s_confident_answers_and_its_abstentions(base: EdgeModel) -> None:
    queries = [p.query for p in generate(16, 11, Split.TRAIN, {1: 1.0})]
    queries += [p.query for p in generate(6, 11, Split.TRAIN, {4: 1.0})]
    answers = {q: base.answer(q) for q in queries}
    abstained = [q for q in queries if answers[q].abstained]
    said = sorted(answers[q].confidence for q in queries if not answers[q].abstained)
    assert abstained and len(said) >= 8, "the base should answer some queries and pass on others"
    # A stricter threshold than the base's own: half of what it says is not sure enough to replay.
    strict = with_threshold(base, said[len(said) // 2])
    sure = [q for q in queries if not answers[q].abstained and answers[q].confidence >= strict.calibration.threshold]
    assert 0 < len(sure) < len(said)

    replay = replay_examples(strict, queries)
    assert sorted((e.query, e.target) for e in replay) == sorted(
        [(q, answers[q].text) for q in sure] + [(q, "") for q in abstained]
    )
    assert all(e.weight == 1.0 for e in replay)
    # A fresh student learns where to pass from the escalations: no abstentions replayed.
    assert sorted(e.query for e in replay_examples(strict, queries, abstentions=False)) == sorted(sure)


def test_nothing_is_replayed_without_queries_or_a_calibration(base: EdgeModel) -> None:
    assert replay_examples(base, []) == []
    assert replay_examples(with_threshold(base, None), ["1+1"]) == []  # nothing says what it is sure of


@pytest.fixture(scope="module")
def tokenizer():
    return build_student_tokenizer()


def examples(prefix: str, n: int, target_length: int, weight: float = 1.0) -> list[TrainingExample]:
    return [TrainingExample(f"{prefix}{i}", "7" * target_length, weight) for i in range(n)]


def test_batches_hold_replay_and_escalations_in_their_shares_padded_apart(tokenizer) -> None:
    escalations = examples("1+", 5, target_length=30)
    replay = examples("2*", 5, target_length=1)
    batches = EscalationBatches(
        tokenizer, TEMPLATE, escalations, replay, batch_size=8, replay_share=0.25, seed=0, max_target_tokens=64
    )
    escalation_part, replay_part = batches(0)["parts"]
    assert escalation_part["input_ids"].shape[0] == 6 and replay_part["input_ids"].shape[0] == 2
    # Each part is as wide as its own longest row: the replay rows are not padded to the escalations'.
    assert replay_part["input_ids"].shape[1] < escalation_part["input_ids"].shape[1]
    assert bool(replay_part["attention_mask"].all())
    for part, length in ((escalation_part, 30), (replay_part, 1)):
        labels = part["labels"]
        eos = tokenizer.eos_token_id
        # The loss is on the target and its end token only, never on the prompt.
        assert ((labels != -100).sum(1) == length + 1).all()
        assert (labels.max(1).values >= 0).all() and (labels == eos).sum() == labels.shape[0]
    only = EscalationBatches(
        tokenizer, TEMPLATE, escalations, [], batch_size=8, replay_share=0.25, seed=0, max_target_tokens=64
    )
    (part,) = only(0)["parts"]
    assert part["input_ids"].shape[0] == 8  # no replay: every row an escalation


def test_a_target_over_the_token_limit_is_learnt_as_an_abstention(tokenizer) -> None:
    escalations = examples("1+", 3, target_length=5) + examples("3*", 2, target_length=40)
    batches = EscalationBatches(
        tokenizer, TEMPLATE, escalations, [], batch_size=16, replay_share=0.0, seed=0, max_target_tokens=10
    )
    assert batches.too_long == 2
    (part,) = batches(0)["parts"]
    targets = [[t for t in row.tolist() if t != -100] for row in part["labels"]]
    eos = tokenizer.eos_token_id
    assert {len(t) for t in targets} == {6, 1}  # five digits and the end, or the end token alone
    assert all(t == [eos] for t in targets if len(t) == 1)


def test_escalations_are_drawn_by_weight_and_the_same_way_for_a_seed(tokenizer) -> None:
    # Told apart by their targets' lengths: two, three and four digits (and the end token).
    escalations = [
        TrainingExample("1+1", "22", 1.0),
        TrainingExample("1+2", "333", 1.0),
        TrainingExample("1+3", "4444", 0.0),  # weight 0: never drawn
    ]

    def drawn(seed: int) -> list[int]:
        batches = EscalationBatches(
            tokenizer, TEMPLATE, escalations, [], batch_size=32, replay_share=0.0, seed=seed, max_target_tokens=64
        )
        return [int(n) for step in range(3) for n in (batches(step)["parts"][0]["labels"] != -100).sum(1)]

    first = drawn(1)
    assert first == drawn(1) and first != drawn(2)
    assert set(first) == {3, 4}


def test_the_loss_counts_every_target_token_the_same_in_either_part(tokenizer) -> None:
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(tiny_qwen3_config(tokenizer)).eval()
    batches = EscalationBatches(
        tokenizer, TEMPLATE, examples("1+", 4, target_length=12), examples("2*", 4, target_length=1),
        batch_size=8, replay_share=0.5, seed=0, max_target_tokens=64,
    )  # fmt: skip
    parts = batches(0)["parts"]
    with torch.no_grad():
        loss = float(parts_loss(model, {"parts": parts}))
        means = [float(causal_lm_loss(model, part)) for part in parts]
    tokens = [int((part["labels"][:, 1:] != -100).sum()) for part in parts]
    assert tokens == [4 * 13, 4 * 2]
    # Token-weighted: not the mean of the two parts' means.
    assert loss == pytest.approx(np.average(means, weights=tokens), rel=1e-5)
    assert loss != pytest.approx(np.mean(means), rel=1e-3)


def test_progress_is_right_answers_per_group_of_the_base_s_validation_data(
    shipped_models: Path, tmp_path: Path
) -> None:
    reference = shipped_models / "student-reference"
    student = AutoModelForCausalLM.from_pretrained(str(reference)).eval()
    student_tokenizer = AutoTokenizer.from_pretrained(str(reference))
    rows = [
        Row(query=p.query, answer=str(p.answer), group="simple") for p in generate(12, 4, Split.VALIDATION, {1: 1.0})
    ]
    rows += [Row(query=p.query, answer=str(p.answer), group="long") for p in generate(6, 4, Split.VALIDATION, {4: 1.0})]
    random.Random(0).shuffle(rows)
    write_dataset(tmp_path / "data", name="sums", answer_match="number", train=rows, validation=rows, test=rows)
    task = DatasetTask(read_dataset(tmp_path / "data"), "number")
    on_eval = progress_check(student, student_tokenizer, TEMPLATE, 10, task, seed=0)
    figures = on_eval(1)
    assert set(figures) == {"val_long_right", "val_simple_right"}
    assert figures["val_simple_right"] >= 11 / 12  # the base answers simple sums
    assert figures["val_long_right"] == 0.0  # and passes on four-step ones
