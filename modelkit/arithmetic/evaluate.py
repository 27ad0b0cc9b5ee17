"""Evaluate the demo models on fresh queries (seeds never used in training).

Measures, on one set of test queries: the teacher with and without thinking,
the student in PyTorch fp32, the student's ONNX graphs (fp32 and int8) through
the edge runtime, triage precision/coverage at the calibrated threshold,
single-thread latency, model sizes, and the teacher's accuracy against its
thinking-token budget (with a PNG plot).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerFast

from edgecloud.edge.runtime import EdgeAnswer, EdgeModel
from edgecloud.modelkit.arithmetic.student import student_answers
from edgecloud.modelkit.arithmetic.task import Problem, Split, generate, parse_answer
from edgecloud.modelkit.arithmetic.teacher import chat_prompt
from edgecloud.modelkit.decoding import Generation, generate_batch

__all__ = ["ModelPaths", "evaluate_all", "per_k_accuracy"]

log = logging.getLogger(__name__)

TEACHER_DIR = "cloud-teacher"
STUDENT_DIR = "edge-student"
REFERENCE_DIR = "student-reference"
BUDGETS = (0, 8, 16, 32, 48, 64, 80, 96, 112, 128, 160)


@dataclass(frozen=True)
class ModelPaths:
    """Where ``edgecloud models build`` puts things under one folder."""

    root: Path

    @property
    def teacher(self) -> Path:
        return self.root / TEACHER_DIR

    @property
    def student_bundle(self) -> Path:
        return self.root / STUDENT_DIR

    @property
    def reference(self) -> Path:
        """The fp32 PyTorch student and its fp32 ONNX graph, kept for comparison."""
        return self.root / REFERENCE_DIR


def per_k_accuracy(problems: Sequence[Problem], answers: Sequence[str]) -> dict[str, float]:
    hits: dict[int, list[bool]] = defaultdict(list)
    for problem, text in zip(problems, answers, strict=True):
        hits[problem.k].append(parse_answer(text) == problem.answer)
    out = {f"k{k}": sum(v) / len(v) for k, v in sorted(hits.items())}
    multi = [h for k, v in hits.items() if k >= 2 for h in v]
    if multi:
        out["k2-4"] = sum(multi) / len(multi)
    out["all"] = sum(h for v in hits.values() for h in v) / max(1, sum(len(v) for v in hits.values()))
    return out


def run_batched(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    problems: Sequence[Problem],
    *,
    thinking: bool,
    budget: int | None = None,
    batch_size: int = 200,
    desc: str = "generate",
) -> list[Generation]:
    """Generate for every problem, batching prompts of similar length together."""
    order = sorted(range(len(problems)), key=lambda i: (problems[i].k, len(problems[i].query)))
    results: list[Generation | None] = [None] * len(problems)
    max_new = 12 if not thinking else 200
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
        chunk = order[start : start + batch_size]
        prompts = [chat_prompt(tokenizer, problems[i].query, enable_thinking=thinking) for i in chunk]
        for i, gen in zip(
            chunk,
            generate_batch(model, tokenizer, prompts, max_new_tokens=max_new, reasoning_budget=budget),
            strict=True,
        ):
            results[i] = gen
    return [r for r in results if r is not None]


def latency_summary(samples_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    return {
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "mean_ms": statistics.fmean(ordered),
    }


@torch.no_grad()
def torch_single_latency(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    queries: Sequence[str],
    *,
    template: str,
    max_new_tokens: int,
) -> list[float]:
    """Per-query latency of the PyTorch student, batch 1, greedy with a KV cache, on the bundle's prompt."""
    samples = []
    for query in queries:
        started = time.perf_counter()
        generate_batch(model, tokenizer, [template.format(query=query)], max_new_tokens=max_new_tokens)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def edge_answers(model: EdgeModel, problems: Sequence[Problem], desc: str) -> list[EdgeAnswer]:
    return [model.answer(p.query) for p in tqdm(problems, desc=desc, unit="q", leave=False)]


def triage_report(problems: Sequence[Problem], answers: Sequence[EdgeAnswer], threshold: float) -> dict[str, float]:
    kept = [(p, a) for p, a in zip(problems, answers, strict=True) if a.confidence >= threshold]
    right = [parse_answer(a.text) == p.answer for p, a in kept]
    simple = [p for p in problems if p.k == 1]
    kept_simple = [p for p, _ in kept if p.k == 1]
    return {
        "threshold": threshold,
        "kept_share": len(kept) / len(problems),
        "precision_kept": sum(right) / len(right) if right else None,
        "coverage_k1": len(kept_simple) / len(simple) if simple else None,
        "kept_multi_step": float(len(kept) - len(kept_simple)),
    }


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def budget_curve(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, problems: Sequence[Problem], budgets: Sequence[int]
) -> list[dict[str, float]]:
    curve = []
    for budget in tqdm(budgets, desc="thinking budget", unit="budget"):
        gens = run_batched(model, tokenizer, problems, thinking=True, budget=budget, desc=f"budget {budget}")
        acc = per_k_accuracy(problems, [g.answer_text for g in gens])
        curve.append(
            {"budget": budget, **acc, "mean_reasoning_tokens": float(np.mean([g.reasoning_tokens for g in gens]))}
        )
    return curve


def plot_budget_curve(curve: list[dict[str, float]], unlimited: dict[str, float], out_file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    budgets = [c["budget"] for c in curve]
    for key, label in (("all", "all queries"), ("k1", "k=1"), ("k2", "k=2"), ("k3", "k=3"), ("k4", "k=4")):
        ax.plot(budgets, [100 * c.get(key, float("nan")) for c in curve], marker="o", ms=3, label=label)
    ax.axhline(100 * unlimited["all"], color="grey", ls="--", lw=1, label="no budget (all)")
    ax.set_xlabel("thinking budget (reasoning tokens)")
    ax.set_ylabel("exact-answer accuracy (%)")
    ax.set_title("Teacher accuracy vs thinking budget")
    ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file)
    plt.close(fig)


def _teacher_report(paths: ModelPaths, problems, out_dir: Path, *, seed: int, budget_n: int) -> dict[str, object]:
    tokenizer = AutoTokenizer.from_pretrained(str(paths.teacher))
    teacher = AutoModelForCausalLM.from_pretrained(str(paths.teacher)).eval()
    log.info("teacher with thinking on %d queries", len(problems))
    thinking = run_batched(teacher, tokenizer, problems, thinking=True, desc="teacher thinking")
    report: dict[str, object] = {
        "teacher_thinking": {
            **per_k_accuracy(problems, [g.answer_text for g in thinking]),
            "mean_reasoning_tokens": float(np.mean([g.reasoning_tokens for g in thinking])),
            "max_reasoning_tokens": int(max(g.reasoning_tokens for g in thinking)),
        }
    }
    direct = run_batched(teacher, tokenizer, problems, thinking=False, desc="teacher direct")
    report["teacher_no_thinking"] = per_k_accuracy(problems, [g.answer_text for g in direct])

    budget_problems = generate(budget_n, seed + 1, Split.TEST)
    curve = budget_curve(teacher, tokenizer, budget_problems, BUDGETS)
    unlimited = per_k_accuracy(
        budget_problems, [g.answer_text for g in run_batched(teacher, tokenizer, budget_problems, thinking=True)]
    )
    report["teacher_budget_curve"] = curve
    plot_file = out_dir / "teacher_accuracy_vs_budget.png"
    plot_budget_curve(curve, unlimited, plot_file)
    report["plots"] = [str(plot_file)]
    report["teacher_params"] = sum(p.numel() for p in teacher.parameters())
    return report


def _student_report(paths: ModelPaths, problems, *, latency_n: int) -> dict[str, object]:
    torch.set_num_threads(1)
    student = AutoModelForCausalLM.from_pretrained(str(paths.reference)).eval()
    student_tok = AutoTokenizer.from_pretrained(str(paths.reference))
    int8 = EdgeModel.from_bundle(paths.student_bundle, precision="int8", threads=1)
    torch_answers = student_answers(
        student, student_tok, int8.prompt_template, [p.query for p in problems], max_new_tokens=int8.max_new_tokens
    )
    report: dict[str, object] = {"student_fp32_torch": per_k_accuracy(problems, torch_answers)}

    fp32 = EdgeModel(
        paths.reference / "model.onnx",
        int8.tokenizer_file,
        **int8.decoding,
        calibration=int8.calibration,
        threads=1,
    )
    int8_answers = edge_answers(int8, problems, "student int8 onnx")
    fp32_answers = edge_answers(fp32, problems, "student fp32 onnx")
    report["student_int8_onnx"] = per_k_accuracy(problems, [a.text for a in int8_answers])
    report["student_fp32_onnx"] = per_k_accuracy(problems, [a.text for a in fp32_answers])
    report["int8_vs_fp32_onnx_agreement"] = float(
        np.mean([a.text == b.text for a, b in zip(int8_answers, fp32_answers, strict=True)])
    )
    if int8.calibration is not None:
        report["triage"] = triage_report(problems, int8_answers, int8.calibration.threshold)

    simple = [p.query for p in problems if p.k == 1][:latency_n]
    torch_ms = torch_single_latency(
        student, student_tok, simple, template=int8.prompt_template, max_new_tokens=int8.max_new_tokens
    )
    int8_ms = [int8.answer(q).latency_ms for q in simple]
    fp32_ms = [fp32.answer(q).latency_ms for q in simple]
    report["latency_single_thread_k1"] = {
        "n": len(simple),
        "torch_fp32": latency_summary(torch_ms),
        "onnx_fp32": latency_summary(fp32_ms),
        "onnx_int8": latency_summary(int8_ms),
        "speedup_int8_vs_torch_p50": statistics.median(torch_ms) / statistics.median(int8_ms),
    }
    report["student_params"] = sum(p.numel() for p in student.parameters())
    report["student_onnx_int8_file"] = int8.model_file.name
    return report


def evaluate_all(
    models: Path,
    out_dir: Path,
    *,
    n: int = 2000,
    seed: int = 0,
    budget_n: int = 400,
    latency_n: int = 200,
    threads: int = 2,
) -> dict[str, object]:
    """Evaluate everything under ``models`` on ``n`` fresh TEST-split queries."""
    paths = ModelPaths(models)
    torch.set_num_threads(threads)
    problems = generate(n, seed, Split.TEST)
    report: dict[str, object] = {"n": n, "seed": seed, "split": Split.TEST.name}
    teacher = _teacher_report(paths, problems, out_dir, seed=seed, budget_n=budget_n)
    student = _student_report(paths, problems, latency_n=latency_n)
    params = {"teacher": teacher.pop("teacher_params"), "student": student.pop("student_params")}
    int8_file = student.pop("student_onnx_int8_file")
    report.update(teacher)
    report.update(student)
    sizes = {
        "teacher_safetensors": _size(paths.teacher / "model.safetensors"),
        "student_torch_fp32_safetensors": _size(paths.reference / "model.safetensors"),
        "student_onnx_fp32": _size(paths.reference / "model.onnx"),
        "student_onnx_int8": _size(paths.student_bundle / int8_file),
    }
    sizes["int8_vs_torch_fp32_ratio"] = sizes["student_torch_fp32_safetensors"] / sizes["student_onnx_int8"]
    report["sizes_bytes"] = sizes
    report["params"] = params
    return report
