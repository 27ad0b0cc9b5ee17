"""Probe: a fresh reasoner trained from scratch on scratchpad records shaped like the cloud's escalations.

Usage: .venv/bin/python benchmarks/probes/probe_fresh_reasoner.py HIDDEN LAYERS STEPS MAX_TARGET_TOKENS BATCH
(measured: 160 4 1500 130 64; figures in docs/models.md). Prints CHECK lines with exact answers per k."""

import argparse
import json
import random
import time

from edgecloud.modelkit.arithmetic.scratchpad import think_text
from edgecloud.modelkit.arithmetic.student import student_answers, student_prompt
from edgecloud.modelkit.arithmetic.task import Split, generate, parse_answer
from edgecloud.modelkit.arithmetic.teacher import ModelSpec, build_model
from edgecloud.modelkit.tokenizer import build_student_tokenizer
from edgecloud.modelkit.training import TrainConfig, collate, train
from edgecloud.shared.reasoner.thinking import THINK_END, THINK_START


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("hidden", "layers", "steps", "max_target_tokens", "batch"):
        parser.add_argument(name, type=int)
    args = parser.parse_args()
    d, layers, steps, maxtok, bs = args.hidden, args.layers, args.steps, args.max_target_tokens, args.batch
    tok = build_student_tokenizer()
    spec = ModelSpec(
        hidden_size=d,
        intermediate_size=3 * d,
        num_hidden_layers=layers,
        num_attention_heads=d // 32,
        num_key_value_heads=d // 32,
        max_position_embeddings=256,
    )
    model = build_model(spec, tok, 0)
    print("params", sum(p.numel() for p in model.parameters()) / 1e6, flush=True)
    template = "{query}="
    pool = generate(400, 1, Split.TRAIN, {1: 1.0}) + generate(12000, 2, Split.TRAIN, {2: 1 / 3, 3: 1 / 3, 4: 1 / 3})
    eos = tok.eos_token
    rows, too_long = [], 0
    for p in pool:
        target = f"{THINK_START}{think_text(p)}{THINK_END}{p.answer}"
        prompt = tok(student_prompt(template, p.query), add_special_tokens=False)["input_ids"]
        t = tok(target + eos, add_special_tokens=False)["input_ids"]
        if len(t) > maxtok:
            t = [tok.eos_token_id]
            too_long += 1
        rows.append((prompt, t))
    print("rows", len(rows), "too long", too_long, "mean target", sum(len(t) for _, t in rows) / len(rows), flush=True)
    rng = random.Random(0)

    def batches(_):
        chosen = rng.choices(rows, k=bs)
        return collate([(p + t, len(p)) for p, t in chosen], tok.pad_token_id)

    val = generate(300, 5, Split.VALIDATION, {1: 1 / 3, 2: 1 / 3, 3: 1 / 3})
    started = time.monotonic()

    def check(step):
        answers = student_answers(model, tok, template, [p.query for p in val], max_new_tokens=maxtok)
        out = {}
        for k in (1, 2, 3):
            r = [parse_answer(a) == p.answer for a, p in zip(answers, val) if p.k == k]
            out[f"k{k}"] = sum(r) / len(r)
        out["t"] = time.monotonic() - started
        print("CHECK", step, json.dumps(out), flush=True)
        return out

    train(
        model,
        batches,
        TrainConfig(steps=steps, batch_size=bs, lr=2e-3, warmup=100, threads=2),
        on_eval=check,
        eval_every=250,
        desc="probe",
    )


if __name__ == "__main__":
    main()
