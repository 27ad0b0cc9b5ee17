"""The model kit's training loop: its schedule (linear warm-up, cosine decay to a floor), batches
padded with the loss on the targets only, the loss falling on a problem a model can learn, weight
decay on the matrices only, and the progress checks it runs."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from edgecloud.modelkit.training import TrainConfig, causal_lm_loss, collate, train

PAD = 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("steps", 0), ("batch_size", 0), ("lr", 0.0), ("lr", 1.0), ("threads", 0)],
)
def test_bad_settings_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{"steps": 10, field: value})


def test_the_learning_rate_warms_up_then_decays_to_its_floor() -> None:
    config = TrainConfig(steps=110, lr=1e-2, warmup=10, min_lr_ratio=0.1)
    warmup = [config.lr_at(step) for step in range(10)]
    assert warmup == pytest.approx([1e-3 * (i + 1) for i in range(10)])  # linear, reaching the peak
    assert config.lr_at(10) == pytest.approx(1e-2)  # the cosine starts at the peak
    assert config.lr_at(60) == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5))  # halfway down
    assert config.lr_at(110) == pytest.approx(1e-3) and config.lr_at(500) == pytest.approx(1e-3)  # the floor
    decay = [config.lr_at(step) for step in range(10, 111)]
    assert all(a > b for a, b in itertools.pairwise(decay))
    assert TrainConfig(steps=10, lr=1e-3, warmup=0).lr_at(0) == pytest.approx(1e-3)


def test_a_batch_is_right_padded_with_the_loss_on_the_targets_only() -> None:
    batch = collate([([5, 6, 7, 8], 2), ([9, 10], 1)], PAD)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8], [-100, 10, -100, -100]]


def test_the_causal_lm_loss_is_the_targets_mean_negative_log_likelihood() -> None:
    from transformers import Qwen3ForCausalLM

    from edgecloud.modelkit.tokenizer import build_tokenizer
    from tests.helpers.cloud import tiny_qwen3_config

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(tiny_qwen3_config(build_tokenizer())).eval()
    examples = [([20, 21, 22, 23, 24], 3), ([30, 31, 32], 1)]
    with torch.no_grad():
        loss = float(causal_lm_loss(model, collate(examples, PAD)))
        nll = []
        for ids, loss_from in examples:  # each example alone, unpadded: -log p(token | what precedes it)
            logprobs = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
            nll += [-float(logprobs[i - 1, ids[i]]) for i in range(loss_from, len(ids))]
    assert loss == pytest.approx(sum(nll) / len(nll), rel=1e-4)


class Line(torch.nn.Module):
    """``y = x @ w + b``, with a norm-named parameter that weight decay must leave alone."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 1)
        self.norm = torch.nn.Parameter(torch.ones(3))


def regression(model: Line, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.nn.functional.mse_loss(model.proj(batch["x"] * model.norm).squeeze(-1), batch["y"])


TRUE_W = torch.tensor([1.0, -2.0, 0.5])


def line_batch(step: int) -> dict[str, torch.Tensor]:
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(step))
    return {"x": x, "y": x @ TRUE_W + 0.3}


def test_the_loss_falls_on_a_problem_the_model_can_learn() -> None:
    torch.manual_seed(0)
    model = Line()
    held_out = line_batch(10_000)
    with torch.no_grad():
        before = float(regression(model, held_out))
    config = TrainConfig(steps=300, batch_size=32, lr=0.05, warmup=20, weight_decay=0.0)
    history = train(model, line_batch, config, loss_fn=regression, desc="line")
    with torch.no_grad():
        after = float(regression(model, held_out))
    assert after < before / 1000, (before, after)
    assert not model.training  # handed back ready to evaluate
    # Logged every 50 steps and at the end, with the learning rate that step used.
    assert [r["step"] for r in history] == [50, 100, 150, 200, 250, 300]
    assert [r["lr"] for r in history] == [config.lr_at(r["step"] - 1) for r in history]
    assert history[-1]["loss"] < history[0]["loss"]


def test_weight_decay_shrinks_matrices_only() -> None:
    # A loss with no gradient: AdamW moves the parameters by their decay alone.
    model = Line()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = TrainConfig(steps=1, lr=0.1, warmup=1, weight_decay=0.5)
    train(model, line_batch, config, loss_fn=lambda m, _b: sum((p * 0).sum() for p in m.parameters()))
    after = dict(model.named_parameters())
    assert torch.allclose(after["proj.weight"], before["proj.weight"] * (1 - 0.1 * 0.5))
    assert torch.equal(after["proj.bias"], before["proj.bias"]) and torch.equal(after["norm"], before["norm"])


def test_progress_checks_run_every_eval_every_steps_and_at_the_end() -> None:
    model = Line()
    seen: list[tuple[int, bool, bool]] = []

    def on_eval(step: int) -> dict[str, float]:
        seen.append((step, model.training, torch.is_grad_enabled()))
        return {"val_right": step / 1000}

    config = TrainConfig(steps=110, lr=0.01, warmup=5)
    history = train(model, line_batch, config, loss_fn=regression, on_eval=on_eval, eval_every=40)
    assert seen == [(40, False, False), (80, False, False), (110, False, False)]  # in eval mode, without gradients
    assert [(r["step"], r.get("val_right")) for r in history] == [(50, None), (100, None), (110, 0.11)]
    assert not math.isnan(history[-1]["loss"])


def test_grown_layers_start_as_identities_and_load_back(shipped_base_models: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from edgecloud.modelkit.arithmetic.build import load_reference_student
    from edgecloud.modelkit.arithmetic.student import StudentRecipe
    from edgecloud.modelkit.training import grow_layers

    student, tokenizer = load_reference_student(shipped_base_models / "student-reference", StudentRecipe(), 0)
    ids = tokenizer(["12+34=", "7*8="], add_special_tokens=False, return_tensors="pt", padding=True)["input_ids"]
    with torch.no_grad():
        before = student(input_ids=ids).logits
        layers = student.config.num_hidden_layers
        grow_layers(student, 2)
        after = student(input_ids=ids).logits
    assert student.config.num_hidden_layers == layers + 2 == len(student.model.layers)
    assert len(student.config.layer_types) == layers + 2
    assert torch.allclose(before, after, atol=1e-6)
    student.save_pretrained(str(tmp_path / "grown"))
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "grown")).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, after, atol=1e-5)
