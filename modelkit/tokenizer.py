"""The demo models' tokenizers: one token per character, Qwen3 special tokens.

Saved as a ``PreTrainedTokenizerFast`` so ``AutoTokenizer.from_pretrained(dir)``
loads it exactly like a real model's tokenizer, with a Qwen3-style chat
template (``enable_thinking``). Lower-casing and dropping spaces happen in the
tokenizer's normaliser: case and spacing never reach the model.

The student's tokenizer (:func:`build_student_tokenizer`) has the same
vocabulary and a stronger normaliser: it also drops every whitespace
character, the lead-in words and question marks, so ``" What is 23 + 70? "``
reaches the student as ``23+70``. The normaliser is part of ``tokenizer.json``,
so this pre-processing travels with the edge bundle and the edge runtime
applies it without knowing anything about the task.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "STUDENT_LEAD_INS",
    "build_student_tokenizer",
    "build_tokenizer",
    "save_tokenizer",
]

PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_START = "<think>"
THINK_END = "</think>"
UNK = "<|unk|>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END, THINK_START, THINK_END, UNK)
CHARACTERS = "0123456789abcdefghijklmnopqrstuvwxyz+-*()?=~.,:;!'\"/_\n"
# Chat roles are whole tokens so the template costs few positions.
WORDS = ("user", "assistant", "system")

# Qwen3's template, trimmed to what a chat without tools needs: earlier
# assistant turns lose their reasoning, and enable_thinking=false pre-fills an
# empty think block so the model answers directly.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- set content = message['content'] %}"
    "{%- if message['role'] == 'assistant' and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


#: Words a query may open with that carry no meaning for the student (spaces already removed).
STUDENT_LEAD_INS = ("whatis", "compute", "calculate")


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The teacher's tokenizer: chat template, newlines kept (the template and scratchpad use them)."""
    return _build(
        normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"[ \t\r]+"), "")])
    )


def build_student_tokenizer() -> PreTrainedTokenizerFast:
    """The student's tokenizer: the teacher's vocabulary, a normaliser that leaves only the expression."""
    return _build(
        normalizers.Sequence(
            [
                normalizers.NFKC(),
                normalizers.Lowercase(),
                normalizers.Replace(Regex(r"\s+"), ""),
                normalizers.Replace(Regex("^(" + "|".join(STUDENT_LEAD_INS) + ")"), ""),
                normalizers.Replace(Regex(r"\?+"), ""),
            ]
        ),
        chat_template=None,
    )


def _build(normalizer: normalizers.Normalizer, chat_template: str | None = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for piece in (*CHARACTERS, *WORDS):
        vocab.setdefault(piece, len(vocab))
    core = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizer
    core.pre_tokenizer = pre_tokenizers.Split(Regex("|".join(WORDS) + r"|[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token=UNK,
        pad_token=PAD,
        eos_token=IM_END,
        bos_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: Path) -> None:
    tokenizer.save_pretrained(str(directory))
