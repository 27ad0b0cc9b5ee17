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

:func:`build_data_tokenizers` makes the same pair for a dataset (``models build --data``): one
token per character the data uses, the data's most frequent words as whole tokens, spaces kept
(runs of them collapsed), case kept unless the caller folds it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from edgecloud.shared.reasoner.thinking import THINK_END, THINK_START

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "STUDENT_LEAD_INS",
    "build_data_tokenizers",
    "build_student_tokenizer",
    "build_tokenizer",
    "save_tokenizer",
]

PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
UNK = "<|unk|>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END, THINK_START, THINK_END, UNK)
CHARACTERS = "0123456789abcdefghijklmnopqrstuvwxyz+-*()?=~.,:;!'\"/_\n"
# Chat roles are whole tokens so the template costs few positions.
WORDS = ("user", "assistant", "system")

# Qwen3's template, trimmed to what a chat without tools needs: earlier
# assistant turns lose their reasoning (as strip_reasoning does), and
# enable_thinking=false pre-fills an empty think block so the model answers directly.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- set content = message['content'] %}"
    "{%- if message['role'] == 'assistant' and '" + THINK_END + "' in content %}"
    "{%- set content = content.split('" + THINK_END + "')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '" + THINK_START + "\\n\\n" + THINK_END + "\\n\\n' }}"
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


def _build(
    normalizer: normalizers.Normalizer,
    chat_template: str | None = CHAT_TEMPLATE,
    *,
    characters: Iterable[str] = CHARACTERS,
    whole_words: Sequence[str] = (),
    symbol_runs: Sequence[str] = (),
) -> PreTrainedTokenizerFast:
    """A one-token-per-character tokenizer over ``characters``, with :data:`WORDS`, ``whole_words``
    and ``symbol_runs`` as single tokens (``whole_words`` only where they stand as a whole word)."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for piece in (*characters, *WORDS, *whole_words, *symbol_runs):
        vocab.setdefault(piece, len(vocab))
    core = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizer

    def longest_first(pieces: Sequence[str]) -> str:  # an alternation takes the first alternative that matches
        return "|".join(re.escape(p) for p in sorted(pieces, key=lambda p: (-len(p), p)))

    pattern = (r"\b(?:" + longest_first(whole_words) + r")\b|" if whole_words else "") + (
        longest_first(symbol_runs) + "|" if symbol_runs else ""
    )
    pattern += "|".join(WORDS) + r"|[\s\S]"
    core.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
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


#: What counts as a word for :func:`build_data_tokenizers` (letters and ``_``, no digits), and as a
#: run of symbols (punctuation, no space: ``":"`` in JSON).
_WORD_RE = re.compile(r"\b[^\W\d]{2,}\b")
_SYMBOLS_RE = re.compile(r"[^\w\s]{2,}")


def build_data_tokenizers(
    texts: Iterable[str],
    *,
    lowercase: bool = False,
    word_texts: Iterable[str] = (),
    max_words: int = 0,
    min_word_count: int = 20,
    max_symbol_runs: int = 0,
) -> tuple[PreTrainedTokenizerFast, PreTrainedTokenizerFast]:
    """A teacher's and a student's tokenizer for a dataset, sharing one vocabulary.

    The vocabulary has a token for every character of ``texts`` after normalisation (NFKC, and
    lower case when ``lowercase``), and the ``max_words`` most frequent words of ``word_texts``
    (letters only, at least ``min_word_count`` occurrences) as whole tokens: a sentence costs a
    few tokens a word, not one a letter. The ``max_symbol_runs`` most frequent runs of symbols
    (``":"``, ``"}]}``) get a token each too, as often. The teacher's normaliser keeps newlines (the chat
    template and reasoning use them) and collapses other runs of whitespace to one space; the
    student's collapses every run of whitespace to one space and strips the ends. The teacher's
    has :data:`CHAT_TEMPLATE`; the student's none.
    """
    if max_words < 0 or max_symbol_runs < 0 or min_word_count < 1:
        raise ValueError("max_words and max_symbol_runs must be >= 0, min_word_count >= 1")
    fold = [normalizers.Lowercase()] if lowercase else []
    teacher_norm = normalizers.Sequence([normalizers.NFKC(), *fold, normalizers.Replace(Regex(r"[^\S\n]+"), " ")])
    student_norm = normalizers.Sequence(
        [normalizers.NFKC(), *fold, normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    )
    characters = {" ", "\n"}
    for text in texts:
        characters.update(teacher_norm.normalize_str(text))
    counts: Counter[str] = Counter()
    runs: Counter[str] = Counter()
    for text in word_texts:
        normal = teacher_norm.normalize_str(text)
        counts.update(_WORD_RE.findall(normal))
        runs.update(_SYMBOLS_RE.findall(normal))
    words = [w for w, n in counts.most_common() if n >= min_word_count and w not in WORDS][:max_words]
    symbols = [r for r, n in runs.most_common() if n >= min_word_count][:max_symbol_runs]
    shared = {"characters": sorted(characters), "whole_words": words, "symbol_runs": symbols}
    return _build(teacher_norm, **shared), _build(student_norm, chat_template=None, **shared)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: Path) -> None:
    tokenizer.save_pretrained(str(directory))
