"""The demo models' evaluation: its figures (accuracy by k, triage at a threshold, latency
percentiles) on synthetic answers whose figures are known, and a tiny run of the shipped teacher
through the batched generation and the budget curve. (``evaluate_all`` as a whole runs on a quick
build in tests/modelkit/arithmetic/test_build.py.)"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edgecloud.edge.runtime import EdgeAnswer
from edgecloud.modelkit.arithmetic.evaluate import (
    ModelPaths,
    budget_curve,
    latency_summary,
    per_k_accuracy,
    plot_budget_curve,
    run_batched,
    triage_report,
)
from edgecloud.modelkit.arithmetic.task import Problem, Split, generate


def problems(*ks: int) -> list[Problem]:
    return [generate(1, seed, Split.TEST, {k: 1.0})[0] for seed, k in enumerate(ks)]


def test_accuracy_by_k_multi_step_and_overall() -> None:
    asked = problems(1, 1, 1, 1, 2, 2, 3, 4)
    right = [True, True, True, False, True, False, False, True]
    answers = [str(p.answer) if ok else str(p.answer + 1) for p, ok in zip(asked, right, strict=True)]
    assert per_k_accuracy(asked, answers) == {
        "k1": 0.75, "k2": 0.5, "k3": 0.0, "k4": 1.0, "k2-4": 0.5, "all": 5 / 8,
    }  # fmt: skip
    # An answer is the number alone: spaces around it are fine, words are not.
    assert per_k_accuracy(asked[:2], [f" {p.answer}\n" for p in asked[:2]])["all"] == 1.0
    assert per_k_accuracy(asked[:2], [f"It is {p.answer}." for p in asked[:2]])["all"] == 0.0
    simple_only = per_k_accuracy(asked[:2], ["", "?"])
    assert simple_only == {"k1": 0.0, "all": 0.0}  # no multi-step query: no k2-4 figure


def edge_answer(text: str, confidence: float) -> EdgeAnswer:
    return EdgeAnswer(
        text=text, token_logprobs=(-0.1,), confidence=confidence, features=np.zeros(2, np.float32),
        input_tokens=4, output_tokens=1, latency_ms=1.0,
    )  # fmt: skip


def test_triage_figures_at_a_threshold() -> None:
    asked = problems(1, 1, 1, 1, 2, 3)
    answers = [
        edge_answer(str(asked[0].answer), 0.99),  # kept, right
        edge_answer(str(asked[1].answer), 0.95),  # kept, right
        edge_answer("0", 0.92),  # kept, wrong
        edge_answer(str(asked[3].answer), 0.5),  # escalated
        edge_answer(str(asked[4].answer), 0.97),  # kept, a multi-step query
        edge_answer("", 0.0),  # abstained
    ]
    assert triage_report(asked, answers, 0.9) == {
        "threshold": 0.9, "kept_share": 4 / 6, "precision_kept": 3 / 4, "coverage_k1": 3 / 4, "kept_multi_step": 1.0,
    }  # fmt: skip
    nothing = triage_report(asked, answers, 1.0)
    assert nothing["kept_share"] == 0 and nothing["precision_kept"] is None and nothing["coverage_k1"] == 0
    assert triage_report(asked[4:], answers[4:], 0.9)["coverage_k1"] is None  # no simple query to cover


def test_latency_percentiles() -> None:
    summary = latency_summary([float(ms) for ms in range(100, 0, -1)])  # 1..100 ms, in any order
    assert summary == {"p50_ms": 50.5, "p99_ms": 99.0, "mean_ms": 50.5}
    assert latency_summary([7.0]) == {"p50_ms": 7.0, "p99_ms": 7.0, "mean_ms": 7.0}


def test_the_model_folders_under_one_root(tmp_path: Path) -> None:
    paths = ModelPaths(tmp_path)
    assert (paths.teacher, paths.student_bundle, paths.reference) == (
        tmp_path / "cloud-teacher", tmp_path / "edge-student", tmp_path / "student-reference",
    )  # fmt: skip


@pytest.fixture(scope="module")
def shipped_teacher(shipped_models: Path):
    pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = shipped_models / "cloud-teacher"
    return AutoModelForCausalLM.from_pretrained(str(folder)).eval(), AutoTokenizer.from_pretrained(str(folder))


def test_batched_generation_answers_each_problem_in_its_own_place(shipped_teacher) -> None:
    # Generated in batches sorted by k and length; handed back in the problems' order, each as it is alone.
    model, tokenizer = shipped_teacher
    asked = problems(3, 1, 2, 1, 4)
    together = run_batched(model, tokenizer, asked, thinking=False, batch_size=2)
    alone = [run_batched(model, tokenizer, [p], thinking=False)[0] for p in asked]
    assert [g.text for g in together] == [g.text for g in alone]
    assert len({g.text for g in alone}) > 1, "the answers must differ for the order to show"
    assert all(g.reasoning_tokens == 0 and g.output_tokens <= 12 for g in together)  # no thinking: 12 tokens at most


def test_the_budget_curve_holds_thinking_to_each_budget(shipped_teacher, tmp_path: Path) -> None:
    model, tokenizer = shipped_teacher
    asked = problems(1)
    curve = budget_curve(model, tokenizer, asked, (0, 8))
    assert [point["budget"] for point in curve] == [0, 8]
    assert curve[0]["mean_reasoning_tokens"] == 0 and 0 < curve[1]["mean_reasoning_tokens"] <= 8
    assert all({"k1", "all"} <= set(point) for point in curve)
    out = tmp_path / "plots" / "budget.png"  # its folder made as needed
    plot_budget_curve(curve, {"all": 1.0}, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not math.isnan(curve[1]["all"])
