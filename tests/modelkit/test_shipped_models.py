"""The demo bundles committed to the repo are intact, loadable and behave as built."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from edgecloud.modelkit.arithmetic.teacher import chat_prompt
from edgecloud.modelkit.decoding import generate_batch
from edgecloud.shared.bundles.manifest import verify_bundle

MAX_SHIPPED_BYTES = 40 * 1024 * 1024
"""Per task: the arithmetic bundles in models/, each other task's in models/<task>/. The arithmetic
student is a pair (base and reasoner), each with its fp32 reference: about 31 MiB with the teacher."""


@pytest.mark.parametrize(("name", "kind"), [("cloud-teacher", "cloud"), ("edge-student", "edge")])
def test_shipped_bundle_integrity(shipped_models: Path, name: str, kind: str) -> None:
    manifest = verify_bundle(shipped_models / name)
    assert manifest.kind == kind
    assert manifest.metadata["quick"] is False


@pytest.mark.parametrize("task", ["arithmetic", "smarthome"])
def test_each_task_s_shipped_models_fit_the_size_budget(shipped_models: Path, task: str) -> None:
    folder = shipped_models / "smarthome" if task == "smarthome" else shipped_models
    files = [f for f in folder.rglob("*") if f.is_file()]
    if task == "arithmetic":  # the other tasks' bundles live in their own folders below models/
        files = [f for f in files if f.relative_to(folder).parts[0] != "smarthome"]
    assert files and sum(f.stat().st_size for f in files) < MAX_SHIPPED_BYTES


def test_teacher_golden_cases_with_thinking(shipped_models: Path) -> None:
    directory = shipped_models / "cloud-teacher"
    manifest = verify_bundle(directory)
    model = AutoModelForCausalLM.from_pretrained(str(directory)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    prompts = [chat_prompt(tokenizer, case.query, enable_thinking=True) for case in manifest.golden]
    generations = generate_batch(model, tokenizer, prompts, max_new_tokens=200)
    for case, generation in zip(manifest.golden, generations, strict=True):
        assert generation.text.startswith("<think>")
        assert generation.reasoning_tokens > 0
        assert generation.answer_text == case.expected
