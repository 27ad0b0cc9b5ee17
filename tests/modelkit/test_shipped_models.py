"""The demo bundles committed to the repo are intact, loadable and behave as built."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from edgecloud.modelkit.decoding import generate_batch
from edgecloud.modelkit.teacher import chat_prompt
from edgecloud.shared.bundle import verify_bundle

MAX_SHIPPED_BYTES = 30 * 1024 * 1024


@pytest.mark.parametrize(("name", "kind"), [("cloud-teacher", "cloud"), ("edge-student", "edge")])
def test_shipped_bundle_integrity(shipped_models: Path, name: str, kind: str) -> None:
    manifest = verify_bundle(shipped_models / name)
    assert manifest.kind == kind
    assert manifest.metadata["quick"] is False


def test_shipped_models_fit_the_size_budget(shipped_models: Path) -> None:
    total = sum(f.stat().st_size for f in shipped_models.rglob("*") if f.is_file())
    assert total < MAX_SHIPPED_BYTES


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
