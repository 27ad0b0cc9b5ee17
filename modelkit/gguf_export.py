"""A model kit teacher as a GGUF file, for llama.cpp's OpenAI-compatible server
(``cloud serve --engine openai``).

Real Qwen3 models carry a byte-level BPE tokenizer, which llama.cpp's own
``convert_hf_to_gguf.py`` converts; use that for them. The model kit's teachers
(:mod:`edgecloud.modelkit.tokenizer`) have a one-token-per-piece vocabulary
(characters, chat roles, frequent words) that llama.cpp cannot load as it is.
This module writes it as the byte-level BPE vocabulary that tokenises the same
text into the same ids:

- every token's text in GPT-2's byte-to-unicode alphabet (``"\\n"`` is ``"Ċ"``);
- a merge chain for every piece longer than one character (``u s``, ``us e``,
  ``use r`` for ``user``), so the pieces form again;
- ``<think>`` and ``</think>`` as user-defined tokens, which llama.cpp renders in
  the text it streams (a stop at ``</think>`` needs that), the rest of the
  special tokens as control tokens, ``<|im_end|>`` as end of turn;
- the pre-tokenizer named ``qwen2`` (llama.cpp recognises tokenizers by a hash of
  their output, which a vocabulary of our own never matches).

One thing llama.cpp does not run is the Hugging Face normaliser (lower case, no
spaces for the demo teacher): the OpenAI backend sends prompts already
normalised (it decodes the ids its own tokenizer made), so the server sees text
that tokenises as the transformers engine's did.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file
from transformers import AutoTokenizer
from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.reasoner.thinking import THINK_END, THINK_START

__all__ = ["GGUF_NAME", "export_gguf"]

log = logging.getLogger(__name__)

GGUF_NAME = "model.gguf"
_ARCHITECTURES = {"qwen3": gguf.MODEL_ARCH.QWEN3}
_UNUSED = "[PAD{}]"


def export_gguf(model_dir: Path, out: Path | None = None, *, half: bool = False) -> Path:
    """Write the Qwen3 model in ``model_dir`` (``config.json``, ``model.safetensors`` and the
    model kit's tokenizer) as one GGUF file; returns its path (``model_dir/model.gguf`` by default).

    ``half`` stores the matrices as float16 (norms stay float32). Raises ConfigError for another
    architecture or a tokenizer llama.cpp's own converter is for.
    """
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    model_type = config.get("model_type")
    if model_type not in _ARCHITECTURES:
        raise ConfigError(
            f"{model_dir}: model_type {model_type!r} is not one this exporter writes ({', '.join(_ARCHITECTURES)}); "
            "use llama.cpp's convert_hf_to_gguf.py"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    kind = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["type"]
    if kind != "WordLevel":
        raise ConfigError(
            f"{model_dir}: a {kind} tokenizer is a real model's; convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    weights_path = model_dir / "model.safetensors"
    if not weights_path.is_file():
        raise ConfigError(f"{model_dir}: no model.safetensors")
    out = Path(out) if out is not None else model_dir / GGUF_NAME
    arch = _ARCHITECTURES[model_type]
    layers = int(config["num_hidden_layers"])
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch])
    _write_hyperparameters(writer, config, model_dir.name, half)
    _write_vocabulary(writer, tokenizer, int(config["vocab_size"]))
    _write_tensors(writer, load_file(str(weights_path)), gguf.get_tensor_name_map(arch, layers), config, half)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not JSON: {exc}") from None


def _write_hyperparameters(writer: gguf.GGUFWriter, config: dict, name: str, half: bool) -> None:
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    writer.add_name(name)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if half else gguf.LlamaFileType.ALL_F32)


def byte_level(text: str) -> str:
    """``text`` in GPT-2's byte-to-unicode alphabet, as a byte-level BPE vocabulary spells it."""
    alphabet = bytes_to_unicode()
    return "".join(alphabet[b] for b in text.encode("utf-8"))


def _write_vocabulary(writer: gguf.GGUFWriter, tokenizer, vocab_size: int) -> None:
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    if len(by_id) > vocab_size:
        raise ConfigError(f"the tokenizer has {len(by_id)} tokens, the model {vocab_size}")
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        text = by_id.get(i)
        if text is None:
            tokens.append(_UNUSED.format(i))
            types.append(gguf.TokenType.UNUSED)
        elif text in (THINK_START, THINK_END):  # rendered in the streamed text, so a stop can match it
            tokens.append(text)
            types.append(gguf.TokenType.USER_DEFINED)
        elif text == tokenizer.unk_token:
            tokens.append(text)
            types.append(gguf.TokenType.UNKNOWN)
        elif text in special:
            tokens.append(text)
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(byte_level(text))
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = merge_chains([t for t, kind in zip(tokens, types, strict=True) if kind == gguf.TokenType.NORMAL])
    writer.add_token_merges([f"{left} {right}" for left, right in merges])
    ids = tokenizer.convert_tokens_to_ids
    writer.add_eos_token_id(ids(tokenizer.eos_token))
    writer.add_eot_token_id(ids(tokenizer.eos_token))
    if tokenizer.pad_token is not None:
        writer.add_pad_token_id(ids(tokenizer.pad_token))
    writer.add_add_bos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def merge_chains(pieces: list[str]) -> list[tuple[str, str]]:
    """Merges that form each multi-character piece again, left to right. A piece's chain can be
    broken by another's pair inside it that ranks first, so the order is repaired: the longest
    pieces' chains first, then, while some piece does not form, its chain moves to the front (a
    few rounds; the order that forms the most pieces is kept). Pieces that still do not form are
    logged: llama.cpp spells them in smaller pieces than the model was trained on."""
    order = sorted((p for p in pieces if len(p) > 1), key=lambda p: (-len(p), p))
    best: tuple[list[tuple[str, str]], list[str]] | None = None
    for _ in range(8):
        merges = list(dict.fromkeys((piece[:end], piece[end]) for piece in order for end in range(1, len(piece))))
        rank = {pair: i for i, pair in enumerate(merges)}
        unformed = [p for p in order if _bpe(p, rank) != [p]]
        if best is None or len(unformed) < len(best[1]):
            best = merges, unformed
        if not unformed:
            break
        order = unformed + [p for p in order if p not in unformed]
    assert best is not None
    merges, unformed = best
    if unformed:
        log.warning(
            "%d of %d multi-character pieces do not form again under BPE merges and reach llama.cpp's model "
            "in smaller pieces: %s",
            len(unformed), len(order), ", ".join(unformed[:20]),
        )  # fmt: skip
    return merges


def _bpe(word: str, rank: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of ``word`` as llama.cpp runs it: the lowest-ranked adjacent pair first."""
    symbols = list(word)
    while len(symbols) > 1:
        pairs = [(rank.get((a, b)), i) for i, (a, b) in enumerate(itertools.pairwise(symbols))]
        known = [(r, i) for r, i in pairs if r is not None]
        if not known:
            break
        _, i = min(known)
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def _write_tensors(writer: gguf.GGUFWriter, weights: dict, names, config: dict, half: bool) -> None:
    tied = bool(config.get("tie_word_embeddings"))
    for hf_name, tensor in sorted(weights.items()):
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reads the embedding as the output when there is no output tensor
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConfigError(f"no GGUF name for tensor {hf_name!r}")
        array = np.asarray(tensor, dtype=np.float32)
        if half and array.ndim > 1:
            array = array.astype(np.float16)
        writer.add_tensor(name, array)
