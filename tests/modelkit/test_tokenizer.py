from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from edgecloud.modelkit.arithmetic.scratchpad import think_text
from edgecloud.modelkit.arithmetic.task import Split, generate
from edgecloud.modelkit.tokenizer import SPECIAL_TOKENS, build_student_tokenizer, build_tokenizer


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerBase:
    return build_tokenizer()


@pytest.fixture(scope="module")
def loaded(tok: PreTrainedTokenizerBase, tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    directory = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], **kwargs: object) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)


SAMPLES = ["what is (12+34)*5-7?", "<think>\n+30+40\n</think>\n\n7<|im_end|>", "compute 3 - 4"]


def test_saved_tokenizer_loads_through_auto_tokenizer(
    tok: PreTrainedTokenizerBase, loaded: PreTrainedTokenizerBase
) -> None:
    assert len(loaded) == len(tok)
    assert loaded.get_vocab() == tok.get_vocab()
    assert (loaded.pad_token, loaded.eos_token, loaded.unk_token) == (tok.pad_token, tok.eos_token, tok.unk_token)
    for text in SAMPLES:
        assert _ids(loaded, text) == _ids(tok, text), text
    messages = [{"role": "user", "content": "1+1"}]
    for thinking in (False, True):
        assert _render(loaded, messages, enable_thinking=thinking) == _render(tok, messages, enable_thinking=thinking)


@pytest.mark.parametrize("variant", ["what is 3+4?", "WHAT IS 3+4 ?", "  What\tis 3 +  4?", "wHaT iS 3+4?"])
def test_case_and_spacing_do_not_change_ids(tok: PreTrainedTokenizerBase, variant: str) -> None:
    assert _ids(tok, variant) == _ids(tok, "What is 3 + 4?")


def test_digits_and_operators_are_distinct(tok: PreTrainedTokenizerBase) -> None:
    ids = _ids(tok, "0123456789+-*()=~")
    assert len(ids) == len(set(ids)) == 17
    assert tok.unk_token_id not in ids


@pytest.mark.parametrize(
    ("thinking", "suffix"),
    [
        (False, "<|im_start|>assistant\n<think>\n\n</think>\n\n"),
        (True, "<|im_start|>assistant\n"),
    ],
    ids=["thinking-off", "thinking-on"],
)
def test_chat_template_generation_prompt(tok: PreTrainedTokenizerBase, thinking: bool, suffix: str) -> None:
    prompt = _render(tok, [{"role": "user", "content": "3+4"}], enable_thinking=thinking)
    assert prompt == "<|im_start|>user\n3+4<|im_end|>\n" + suffix


def test_chat_template_defaults_to_thinking(tok: PreTrainedTokenizerBase) -> None:
    messages = [{"role": "user", "content": "3+4"}]
    assert _render(tok, messages) == _render(tok, messages, enable_thinking=True)


@pytest.mark.parametrize("special", ["<think>", "</think>", "<|im_end|>", "<|im_start|>", "<|endoftext|>"])
def test_special_tokens_are_single_ids(tok: PreTrainedTokenizerBase, special: str) -> None:
    ids = _ids(tok, special)
    assert len(ids) == 1
    assert ids[0] == tok.convert_tokens_to_ids(special)
    assert tok.decode(ids) == special
    # Surrounded by text, still one id each and not lower-cased or split.
    ids = _ids(tok, f"1{special}2")
    assert len(ids) == 3 and ids[1] == tok.convert_tokens_to_ids(special)


def test_special_token_ids_are_stable(tok: PreTrainedTokenizerBase) -> None:
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>"


def test_scratchpad_round_trips(tok: PreTrainedTokenizerBase) -> None:
    for problem in generate(50, seed=3, split=Split.TRAIN):
        text = "<think>\n" + think_text(problem) + "</think>\n\n" + str(problem.answer) + "<|im_end|>"
        ids = _ids(tok, text)
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text
        # One token per scratchpad character.
        assert len(_ids(tok, think_text(problem))) == len(think_text(problem))


@pytest.mark.parametrize("text", ["3#4", "é", "3 § 4", "你好"])
def test_unknown_characters_map_to_unk(tok: PreTrainedTokenizerBase, text: str) -> None:
    ids = _ids(tok, text)
    assert tok.unk_token_id in ids
    assert all(isinstance(i, int) and 0 <= i < len(tok) for i in ids)
    assert tok.unk_token in tok.decode(ids)


def test_earlier_assistant_reasoning_is_stripped(tok: PreTrainedTokenizerBase) -> None:
    messages = [
        {"role": "user", "content": "3+4"},
        {"role": "assistant", "content": "<think>\n+30+40\nsecret\n</think>\n\n7"},
        {"role": "user", "content": "2*5"},
    ]
    prompt = _render(tok, messages, enable_thinking=True)
    assert prompt == (
        "<|im_start|>user\n3+4<|im_end|>\n"
        "<|im_start|>assistant\n7<|im_end|>\n"
        "<|im_start|>user\n2*5<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert "secret" not in prompt


def test_assistant_turn_without_reasoning_is_kept(tok: PreTrainedTokenizerBase) -> None:
    messages = [{"role": "user", "content": "3+4"}, {"role": "assistant", "content": "7"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert prompt == "<|im_start|>user\n3+4<|im_end|>\n<|im_start|>assistant\n7<|im_end|>\n"


@pytest.fixture(scope="module")
def student_tok(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    """The student's tokenizer, saved and loaded back the way bundles and the reference folder carry it."""
    directory = tmp_path_factory.mktemp("student-tokenizer")
    build_student_tokenizer().save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


@pytest.mark.parametrize(
    "variant",
    ["23+70", "What is 23 + 70?", " CALCULATE 23+70 ?", "compute\t23 +70??", "wHaT iS 23+ 70 \n", "calculate23+70"],
)
def test_student_tokenizer_leaves_only_the_expression(student_tok: PreTrainedTokenizerBase, variant: str) -> None:
    ids = _ids(student_tok, variant + "=")
    assert ids == _ids(student_tok, "23+70=")
    assert student_tok.decode(ids) == "23+70="


def test_student_normaliser_travels_in_tokenizer_json(tmp_path: Path) -> None:
    # The edge runtime loads tokenizer.json with the `tokenizers` library alone.
    from tokenizers import Tokenizer

    build_student_tokenizer().backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    core = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert core.normalizer.normalize_str(" What is (12 + 34)*5 - 7? ") == "(12+34)*5-7"
    # A lead-in word is only dropped at the start: inside, it is left for the model to doubt.
    assert core.normalizer.normalize_str("12 - what is 3") == "12-whatis3"


def test_student_tokenizer_shares_the_teacher_vocabulary(tok: PreTrainedTokenizerBase) -> None:
    student = build_student_tokenizer()
    assert student.get_vocab() == tok.get_vocab()
    assert student.eos_token == tok.eos_token
    assert student.chat_template is None
