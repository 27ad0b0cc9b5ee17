"""The model kit's teachers as GGUF: llama.cpp reads the file and tokenises text into the ids the
Hugging Face tokenizer gives (the demo teacher's prompts, the chat roles, a data tokenizer's whole
words), and what the exporter cannot write faithfully it refuses."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the model kit needs torch")
from transformers import AutoTokenizer

from edgecloud.modelkit.gguf_export import export_gguf
from edgecloud.shared.base.errors import ConfigError
from tests.helpers.llama_server import require_llama_python

TOKENIZE = """
import json, sys, llama_cpp
model = llama_cpp.Llama(sys.argv[1], vocab_only=True, verbose=False)
texts = json.loads(sys.stdin.read())
print(json.dumps([model.tokenize(t.encode(), add_bos=False, special=True) for t in texts]))
print(json.dumps([model.detokenize([i], special=True).decode() for i in range(model.n_vocab())]))
"""


def llama_tokenize(gguf: Path, texts: list[str]) -> tuple[list[list[int]], list[str]]:
    """llama.cpp's own tokenisation of ``texts`` and the text of every token, from its venv."""
    python = require_llama_python()
    done = subprocess.run(
        [str(python), "-c", TOKENIZE, str(gguf)], input=json.dumps(texts), capture_output=True, text=True, check=True
    )
    ids, pieces = done.stdout.strip().splitlines()[-2:]
    return json.loads(ids), json.loads(pieces)


def test_llama_cpp_tokenises_the_teachers_prompts_as_its_tokenizer_does(teacher_dir: Path, tmp_path: Path) -> None:
    gguf = export_gguf(teacher_dir, tmp_path / "teacher.gguf")
    tokenizer = AutoTokenizer.from_pretrained(str(teacher_dir))
    conversations = [
        [{"role": "user", "content": "Compute 57 + 12- 30 + 73+70?"}],
        [
            {"role": "system", "content": "Answer with a number."},
            {"role": "user", "content": "what is 2+3?"},
            {"role": "assistant", "content": "5"},
            {"role": "user", "content": "and (2+3)*4?"},
        ],
    ]
    ids, texts = [], []
    for messages in conversations:
        for thinking in (True, False):
            prompt = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, enable_thinking=thinking
            )
            ids.append(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            texts.append(tokenizer.decode(ids[-1], skip_special_tokens=False))  # what the OpenAI backend sends
    served, pieces = llama_tokenize(gguf, texts)
    assert served == ids
    vocabulary = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert pieces[: len(vocabulary)] == vocabulary  # every token reads back as its own text ("\n" too)


def test_a_data_tokenizers_whole_words_form_again_and_a_half_file_is_smaller(teacher_dir: Path, tmp_path: Path) -> None:
    from edgecloud.modelkit.tokenizer import build_data_tokenizers

    teacher, _ = build_data_tokenizers(
        ["turn on the kitchen light", "set the kitchen heating to 21"], word_texts=["kitchen light heating"] * 20,
        max_words=3,
    )  # fmt: skip
    model = tmp_path / "data-teacher"
    shutil.copytree(
        teacher_dir,
        model,
        ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json", "chat_template.jinja"),
    )
    teacher.save_pretrained(str(model))
    config = json.loads((model / "config.json").read_text())
    if len(teacher) > config["vocab_size"]:
        pytest.skip("the data vocabulary outgrew the shipped teacher's embedding")
    text = "turn on the kitchen light"
    full = export_gguf(model, tmp_path / "full.gguf")
    half = export_gguf(model, tmp_path / "half.gguf", half=True)
    (served,), _ = llama_tokenize(full, [text])
    assert served == teacher(text, add_special_tokens=False)["input_ids"]
    assert "kitchen" in teacher.convert_ids_to_tokens(served)
    assert half.stat().st_size < 0.6 * full.stat().st_size


def test_what_the_exporter_cannot_write_is_refused(teacher_dir: Path, tmp_path: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    with pytest.raises(ConfigError, match="config.json"):
        export_gguf(tmp_path)
    llama = tmp_path / "llama"
    shutil.copytree(teacher_dir, llama)
    real = tmp_path / "real"  # a byte-level BPE, as real Qwen3 models have: llama.cpp's converter is for it
    shutil.copytree(teacher_dir, real, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json"))
    bpe = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")])))
    bpe.save_pretrained(str(real))
    with pytest.raises(ConfigError, match="BPE tokenizer is a real model's"):
        export_gguf(real)
    config = json.loads((llama / "config.json").read_text())
    (llama / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ConfigError, match="convert_hf_to_gguf"):
        export_gguf(llama)
    (llama / "config.json").write_text(json.dumps(config))
    (llama / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="model.safetensors"):
        export_gguf(llama)
