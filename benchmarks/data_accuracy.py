"""Accuracy of bundles built from a dataset (``models build --data``) on one of its splits, offline.

The teacher (``cloud-teacher``) answers every query row thinking, greedy and batched; the int8
student (``edge-student``) answers each one with its calibrated confidence. Answers are compared
with the dataset's matching rule. Reported, overall and per ``group``: the teacher's accuracy (the
cloud-only figure), the student's, its abstentions, the share triage keeps at the bundle's
threshold and how many of those are right, and ``auto``: the kept answers from the edge, the rest
from the teacher, as the edge daemon routes them. Prints one JSON object; ``--out`` also writes it
there. Usage::

    python benchmarks/data_accuracy.py --models DIR --data DIR [--split test] [--n N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from edgecloud.edge.runtime import EdgeBundle
from edgecloud.modelkit.arithmetic.evaluate import STUDENT_DIR, TEACHER_DIR
from edgecloud.modelkit.data.datasets import read_dataset
from edgecloud.modelkit.data.teacher import teacher_answers
from edgecloud.shared.bundles.answers import answers_match, rule_of


def _figures(teacher: np.ndarray, student: np.ndarray, abstained: np.ndarray, kept: np.ndarray) -> dict[str, object]:
    auto = np.where(kept, student, teacher)
    return {
        "n": len(teacher),
        "teacher_accuracy": float(teacher.mean()),
        "student_accuracy": float(student.mean()),
        "student_abstained": float(abstained.mean()),
        "kept_share": float(kept.mean()),
        "kept_precision": float(student[kept].mean()) if kept.any() else None,
        "auto_accuracy": float(auto.mean()),
        "auto_over_cloud": float(auto.mean() / teacher.mean()) if teacher.any() else None,
    }


def evaluate(models: Path, data: Path, split: str, n: int | None, max_new_tokens: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    rows = [row for row in read_dataset(data).split(split) if row.query is not None and row.answer.strip()][:n]
    edge = EdgeBundle.load(models / STUDENT_DIR, threads=1)
    rule = rule_of(edge.manifest.io)
    started = time.monotonic()
    answers = [edge.model.answer(row.query) for row in tqdm(rows, desc="student", unit="q", mininterval=2.0)]
    edge_ms = [a.latency_ms for a in answers]
    teacher = AutoModelForCausalLM.from_pretrained(str(models / TEACHER_DIR)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(models / TEACHER_DIR))
    gens = []
    for start in tqdm(range(0, len(rows), 128), desc="teacher", unit="batch", mininterval=2.0):
        gens += teacher_answers(teacher, tokenizer, rows[start : start + 128], max_new_tokens=max_new_tokens)
    right_t = np.array([answers_match(rule, g.answer_text, r.answer) for g, r in zip(gens, rows, strict=True)])
    right_s = np.array([answers_match(rule, a.text, r.answer) for a, r in zip(answers, rows, strict=True)])
    abstained = np.array([a.abstained for a in answers])
    kept = np.array([a.confidence >= edge.model.calibration.threshold for a in answers])
    groups = np.array([row.group or "(none)" for row in rows])
    return {
        "models": str(models),
        "data": str(data),
        "split": split,
        "answer_match": rule,
        "threshold": edge.model.calibration.threshold,
        **_figures(right_t, right_s, abstained, kept),
        "groups": {
            str(g): _figures(right_t[groups == g], right_s[groups == g], abstained[groups == g], kept[groups == g])
            for g in sorted(set(groups))
        },
        "student_latency_ms": {"p50": float(np.median(edge_ms)), "p95": float(np.percentile(edge_ms, 95))},
        "seconds": time.monotonic() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="the build's output folder")
    parser.add_argument("--data", type=Path, required=True, help="the dataset folder")
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"))
    parser.add_argument("--n", type=int, default=None, help="first N query rows only (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="the teacher's token limit per answer")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report = evaluate(args.models, args.data, args.split, args.n, args.max_new_tokens, args.threads)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "data_accuracy.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
