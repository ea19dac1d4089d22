"""Prompt formats and tokenizer helpers: exact renderings, GSM8K markup handling, verifier round trips."""
from __future__ import annotations

import copy
import re

import pytest

from jaxmath.data.formats import (FORMATS, get_format, reasoning_text, render_example, render_prompt,
                                  solution_steps, strip_calculations, strip_final_line)
from jaxmath.data.schema import Record
from jaxmath.data.tokenizer import (CHATML_TEMPLATE, IM_END, PAD_TOKEN, ensure_pad_token, load_tokenizer,
                                    train_tokenizer)
from jaxmath.verify import extract_answer
from jaxmath.verify.sandbox import run_program

GSM8K_SOLUTION = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                  "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")
NATALIA = Record(id="gsm8k-0", answer="72", solution=GSM8K_SOLUTION, source="gsm8k",
                 question="Natalia sold clips to 48 of her friends in April, and then she sold half as many "
                          "clips in May. How many clips did Natalia sell altogether in April and May?")
MATH_RECORD = Record(id="math-1", question="What is $\\frac{1}{2}+\\frac{1}{3}$?", answer="\\frac{5}{6}",
                     solution="We have $\\frac{1}{2}+\\frac{1}{3}=\\boxed{\\frac{5}{6}}$.", source="math")
POT_RECORD = Record(id="pot-1", question="What is 17 * 23 - 5?", answer="386",
                    metadata={"program": "product = 17 * 23\nanswer = product - 5"})


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [NATALIA.question, GSM8K_SOLUTION, MATH_RECORD.solution, *(fmt.system_prompt for fmt in FORMATS.values())]
    return train_tokenizer(corpus * 3, vocab_size=400)


def test_gsm8k_markup_is_stripped_and_turned_into_steps():
    assert strip_final_line(GSM8K_SOLUTION).endswith("April and May.")
    assert strip_calculations("48/2 = <<48/2=24>>24 clips") == "48/2 = 24 clips"
    assert reasoning_text(NATALIA) == ("Natalia sold 48/2 = 24 clips in May.\n"
                                       "Natalia sold 48+24 = 72 clips altogether in April and May.")
    assert solution_steps(GSM8K_SOLUTION) == [
        "Natalia sold 48/2 = 24 clips in May. @@@@ 48/2 = 24 @@@@",
        "Natalia sold 48+24 = 72 clips altogether in April and May. @@@@ 48+24 = 72 @@@@",
    ]


def test_targets_of_each_format():
    reasoning = reasoning_text(NATALIA)
    assert get_format("think_answer").target(NATALIA) == f"<think>\n{reasoning}\n</think>\n<answer>\n72\n</answer>"
    assert get_format("boxed").target(NATALIA) == f"{reasoning}\n\nThe final answer is $\\boxed{{72}}$."
    assert get_format("steps").target(NATALIA) == (
        "<begin_steps><STEP 1> Natalia sold 48/2 = 24 clips in May. @@@@ 48/2 = 24 @@@@ </STEP>\n"
        "<STEP 2> Natalia sold 48+24 = 72 clips altogether in April and May. @@@@ 48+24 = 72 @@@@ </STEP>\n"
        "</end_steps> #### 72")
    assert get_format("pot").target(POT_RECORD) == "```python\nproduct = 17 * 23\nanswer = product - 5\n```"


def test_boxed_keeps_a_solution_that_already_boxes_its_answer():
    assert get_format("boxed").target(MATH_RECORD) == MATH_RECORD.solution


def test_answer_only_records_still_get_a_target():
    bare = Record(id="b", question="1+1?", answer="2")
    assert get_format("think_answer").target(bare) == "<think>\n\n</think>\n<answer>\n2\n</answer>"
    assert get_format("boxed").target(bare) == "The final answer is $\\boxed{2}$."
    assert get_format("steps").target(bare) == "<begin_steps>\n</end_steps> #### 2"


def test_pot_target_needs_a_program_and_says_which_record():
    with pytest.raises(ValueError, match="'gsm8k-0'.*program"):
        get_format("pot").target(NATALIA)


def test_unknown_format_lists_the_known_ones():
    with pytest.raises(ValueError, match="'cot'.*boxed.*pot.*steps.*think_answer"):
        get_format("cot")


def test_prompt_goes_through_the_chat_template(tokenizer):
    fmt = get_format("boxed")
    expected = (f"<|im_start|>system\n{fmt.system_prompt}<|im_end|>\n"
                f"<|im_start|>user\n{NATALIA.question}<|im_end|>\n<|im_start|>assistant\n")
    assert render_prompt(fmt, NATALIA.question, tokenizer) == expected
    prompt, completion = render_example(fmt, NATALIA.question, "It is 72.", tokenizer)
    assert (prompt, completion) == (expected, "It is 72.<|im_end|>\n")


def test_plain_text_layout_without_a_chat_template(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    fmt = get_format("steps")
    prompt, completion = render_example(fmt, "2+2?", "4", plain)
    assert prompt == f"{fmt.system_prompt}\n\nQuestion: 2+2?\nAnswer: "
    assert completion == "4" + IM_END


def test_trained_tokenizer_round_trips_any_text_and_splits_digits(tokenizer):
    text = "Zoë paid 1234 € — ∫ x dx <|im_start|>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    digits = tokenizer.encode("9876", add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(digits) == ["9", "8", "7", "6"]
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert (tokenizer.pad_token, tokenizer.eos_token) == (PAD_TOKEN, IM_END)
    assert len(tokenizer) <= 400


def test_train_tokenizer_rejects_a_vocab_smaller_than_the_bytes():
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_tokenizer(["abc"], vocab_size=100)


def test_saved_tokenizer_loads_back_identically(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    text = render_prompt(get_format("think_answer"), NATALIA.question, loaded)
    assert loaded.chat_template == CHATML_TEMPLATE
    assert loaded.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
    assert loaded.pad_token_id == tokenizer.pad_token_id


def test_missing_pad_token_becomes_eos(tokenizer):
    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    assert ensure_pad_token(no_pad).pad_token == IM_END


def test_load_tokenizer_names_a_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tokenizer(tmp_path / "nowhere")


@pytest.mark.parametrize("record", [NATALIA, MATH_RECORD], ids=["gsm8k", "math"])
@pytest.mark.parametrize("name", ["think_answer", "boxed", "steps"])
def test_each_format_is_read_back_by_its_extraction_style(name, record):
    fmt = get_format(name)
    assert extract_answer(fmt.target(record), style=fmt.extraction_style) == record.answer


def test_pot_target_runs_to_the_answer_in_the_sandbox():
    target = get_format("pot").target(POT_RECORD)
    program = re.fullmatch(r"```python\n(.*)\n```", target, re.DOTALL).group(1)
    result = run_program(program, timeout=30.0)
    assert result.ok, result.error
    assert result.value == POT_RECORD.answer
