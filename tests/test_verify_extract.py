"""Final-answer extraction: every answer format of issue 3, strictness, and the all-answers helper."""
from __future__ import annotations

import pytest

from jaxmath.verify import extract_answer, grade
from jaxmath.verify.extract import extract_all_answers, last_number


@pytest.mark.parametrize("text,style,expected", [
    # boxed and fbox, nested braces, the last one wins
    (r"so $\boxed{\frac{1}{2}}$.", "boxed", r"\frac{1}{2}"),
    (r"first \boxed{3} then \boxed{\frac{\sqrt{2}}{2}}", "boxed", r"\frac{\sqrt{2}}{2}"),
    (r"answer \fbox{7}", "boxed", "7"),
    (r"\boxed{\{1, 2\}}", "boxed", r"\{1, 2\}"),
    (r"\boxed 5 is it", "boxed", "5"),
    # GSM8K
    ("Janet sells 9 eggs.\n#### 18", "gsm8k", "18"),
    ("so\n####   1,234 ", "gsm8k", "1,234"),
    # <answer> tags: whitespace-tolerant, only after </think>
    ("<think>7 * 6 = 42</think><answer>72</answer>", "think_answer", "72"),
    ("<think>\nx\n</think>\n< answer >\n 72 \n</ answer >", "think_answer", "72"),
    (r"<think>r</think><answer>\boxed{3}</answer>", "think_answer", "3"),
    ("<answer>5</answer>", "think_answer", "5"),
    # steps format
    ("<begin_steps><STEP 1> 5 * 7 = 35 @@@@ 5 * 7 = 35 @@@@ </STEP>\n</end_steps> #### 35", "steps", "35"),
    # phrases
    ("Thus the answer is 42.", "answer_is", "42"),
    ("The answer is $\\frac{3}{4}$. Next question.", "answer_is", r"\frac{3}{4}"),
    ("Final Answer: The final answer is $3\\sqrt{2}$. I hope it is correct.", "answer_is", r"3\sqrt{2}"),
    ("She makes 9 * 2 = 18 dollars\nA: 18", "answer_is", "18"),
    ("Answer: 3.5", "answer_is", "3.5"),
    # multiple choice
    ("The answer is (C).", "choice", "C"),
    ("so the correct option is \\boxed{B}", "choice", "B"),
    ("Answer: d) 42", "choice", "D"),
    # auto picks whichever marker is present
    (r"\boxed{12}", "auto", "12"),
    ("work\n#### 7", "auto", "7"),
    ("<think>the answer is 4</think>\n<answer>5</answer>", "auto", "5"),
    ("The answer is 9", "auto", "9"),
])
def test_extracts(text, style, expected):
    assert extract_answer(text, style) == expected


@pytest.mark.parametrize("text,style", [
    ("I think it is 42 but I am not sure", "auto"),          # strict: no marker, no answer
    ("<think>the answer is 72, <answer>72</answer>", "think_answer"),  # think never closed
    ("<think><answer>72</answer></think> no tag after", "think_answer"),  # tag inside think only
    (r"\boxed{1 + ", "boxed"),                                 # unbalanced
    ("", "auto"),
    ("nothing here", "choice"),
])
def test_no_answer_is_none(text, style):
    assert extract_answer(text, style) is None


def test_number_inside_think_is_not_credited():
    completion = "<think>Maybe 72? The answer is 72.</think>\n<answer>71</answer>"
    assert extract_answer(completion, "auto") == "71"
    assert not grade(completion, "72", "think_answer")
    assert grade(completion, "71", "think_answer")


def test_last_number_fallback_is_opt_in():
    text = "we get 3, then 4.5 and finally 1,200 apples"
    assert extract_answer(text) is None
    assert extract_answer(text, fallback_last_number=True) == "1200"
    assert last_number("no digits") is None


def test_all_answers_reports_hedging():
    assert extract_all_answers(r"\boxed{3} or maybe \boxed{4}") == ["3", "4"]
    assert extract_all_answers("<think>t</think><answer>1</answer><answer>2</answer>") == ["1", "2"]
    assert extract_all_answers("#### 5") == ["5"]
    assert extract_all_answers("no answer") == []


def test_bad_style_and_type_name_the_problem():
    with pytest.raises(ValueError, match="unknown extraction style 'latex'"):
        extract_answer("x", style="latex")
    with pytest.raises(TypeError, match="str completion"):
        extract_answer(42)  # type: ignore[arg-type]


def test_long_text_extracts_fast():
    text = "a" * 100_000 + r"\boxed{7}"
    assert extract_answer(text) == "7"
