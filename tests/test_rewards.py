"""Reward functions against hand-computed values."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from jaxmath import rewards as registry
from jaxmath.verify import rewards as R
from jaxmath.verify.answers import extract_program

GOOD = "<think>\nabc\n</think>\n<answer>\n42\n</answer>"
STEPS = ("<begin_steps><STEP 1> He buys 10 boxes of 7 @@@@ 10 * 7 = 70 @@@@ </STEP>\n"
         "<STEP 2> Half of them @@@@ 70 / 2 = 35 @@@@ </STEP>\n"
         "<STEP 3> Unrelated @@@@ 3 + 4 = 8 @@@@ </STEP>\n</end_steps> #### 35")


def _ex(n, answer="42"):
    return [{"answer": answer}] * n


# --- format ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,strict,relaxed", [
    (GOOD, 1.0, 1.0),
    (GOOD + "\n", 1.0, 1.0),
    ("<think>abc</think> <answer>42</answer>", 0.0, 1.0),  # no newlines: relaxed only
    ("<think>\nabc\n</think>\n<answer>\n42\n</answer> and more", 0.0, 1.0),  # trailing text
    ("intro <think>\nabc\n</think>\n<answer>\n42\n</answer>", 0.0, 1.0),  # leading text
    ("<think>\n\n</think>\n<answer>\n42\n</answer>", 0.0, 1.0),  # empty reasoning
    ("<think>\nabc\n</think>\n<answer>\n \n</answer>", 0.0, 0.0),  # empty answer
    (GOOD + "\n<answer>\n3\n</answer>", 0.0, 0.0),  # two answers
    ("<answer>\n42\n</answer>", 0.0, 0.0),
    ("The answer is 42.", 0.0, 0.0),
])
def test_format_rewards(text, strict, relaxed):
    assert R.format_strict([text], _ex(1))[0] == strict
    assert R.format_relaxed([text], _ex(1))[0] == relaxed


def test_tag_count_gives_partial_credit_per_tag():
    texts = [GOOD, "<think>abc</think><answer>42</answer> tail", "<think>abc</think><answer>42",
             GOOD + "<answer>1</answer>", "nothing"]
    scores = R.tag_count(texts, _ex(5))
    np.testing.assert_allclose(scores, [1.0, 1.0 - 4 * 0.001, 0.75, 0.5, 0.0], rtol=1e-6)
    assert scores.dtype == np.float32
    assert R.tag_count(["<think>a</think><answer>1</answer>xy"], _ex(1), trailing_penalty=0.1)[0] == \
        pytest.approx(1.0 - 0.2)


# --- length ---------------------------------------------------------------------------------------

def test_length_bonus_is_log_shaped_and_capped():
    texts = ["one two three", "a b c d e f g", " ".join(["w"] * 100), ""]
    scores = R.length_bonus(texts, _ex(4), target_tokens=7)
    np.testing.assert_allclose(scores, [math.log(4) / math.log(8), 1.0, 1.0, 0.0], rtol=1e-6)
    tokens = R.length_bonus(texts, _ex(4), num_tokens=np.array([1, 3, 0, 63]), target_tokens=63)
    np.testing.assert_allclose(tokens, [math.log(2) / math.log(64), 2 / 6, 0.0, 1.0], rtol=1e-6)


def test_brevity_penalty_is_linear_in_tokens():
    texts = ["a b c", "x"]
    np.testing.assert_allclose(R.brevity(texts, _ex(2)), [-0.0006, -0.0002], rtol=1e-6)
    np.testing.assert_allclose(R.brevity(texts, _ex(2), num_tokens=[1000, 0], per_token=-0.001), [-1.0, 0.0])
    with pytest.raises(ValueError, match="one non-negative count per completion"):
        R.brevity(texts, _ex(2), num_tokens=[3])


# --- steps ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("equation,holds", [
    ("10 * 7 = 70", True), ("10 x 7 = 70", True), ("10 × 7 = 71", False), ("1,000 / 8 = 125", True),
    ("$12 * 3 = $36", True), ("2^10 = 1024", True), ("10 / 3 = 3.33", True), ("10 / 3 = 3.34", False),
    ("7 / 2 = 3", False), ("0.1 + 0.2 = 0.3", True), ("(3 + 4) * 2 = 14 = 7 * 2", True),
    ("1 / 0 = 1", False), ("9 ** 9 ** 9 = 1", False), ("no equals here", False), ("x + 1 = 2", False),
    ("-5 + 2 = -3", True), ("5 - 8 = 3", False),
])
def test_equation_holds(equation, holds):
    assert R.equation_holds(equation) is holds


def test_evaluate_arithmetic_is_exact_and_bounded():
    assert R.evaluate_arithmetic("1/3 + 1/6") == Fraction(1, 2)
    assert R.evaluate_arithmetic("0.1 * 3") == Fraction(3, 10)
    for bad in ("2 ** 1000", "10 ** 64 * 10 ** 64 * 10 ** 64", "__import__('os')", "1e400", "2 ** 0.5"):
        with pytest.raises(ValueError):
            R.evaluate_arithmetic(bad)


def test_step_rewards_by_hand():
    # equations: 70 right, 35 right, 8 wrong -> 2/3; steps 2 uses 70 (yes), step 3 uses 3, 4 (no) -> 1/2.
    assert R.step_arithmetic([STEPS], _ex(1))[0] == pytest.approx(2 / 3)
    assert R.step_chaining([STEPS], _ex(1))[0] == pytest.approx(1 / 2)
    single = "<STEP 1> @@@@ 2 + 2 = 4 @@@@ </STEP> #### 4"
    none = "<begin_steps><STEP 1> just words </STEP></end_steps> #### 4"
    np.testing.assert_allclose(R.step_arithmetic([single, none, "plain"], _ex(3)), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(R.step_chaining([single, none, "plain"], _ex(3)), [1.0, 0.0, 0.0])


# --- registry and combination ---------------------------------------------------------------------

def test_combine_rewards_weights_and_logs_each_function():
    texts = [GOOD, "<think>abc</think> <answer>42</answer>"]
    total, per = registry.combine_rewards(texts, _ex(2), {"format_strict": 2.0, "format_relaxed": 0.5, "brevity": 1.0},
                                   params={"brevity": {"per_token": -0.01}}, num_tokens=[10, 20])
    np.testing.assert_allclose(per["format_strict"], [1, 0])
    np.testing.assert_allclose(per["format_relaxed"], [1, 1])
    np.testing.assert_allclose(per["brevity"], [-0.1, -0.2], rtol=1e-6)
    np.testing.assert_allclose(total, [2 + 0.5 - 0.1, 0.5 - 0.2], rtol=1e-6)
    assert total.dtype == np.float32 and set(per) == {"format_strict", "format_relaxed", "brevity"}


@pytest.mark.parametrize("kwargs,message", [
    (dict(weights={"nope": 1.0}), "unknown reward 'nope'"),
    (dict(weights={"brevity": 1.0}, params={"brevity": {"per_tok": 1}}), "no parameter"),
    (dict(weights={"brevity": "1"}), "finite number"),
    (dict(weights={"brevity": float("nan")}), "finite number"),
    (dict(weights={"brevity": 1.0}, params={"tag_count": {}}), "no weight"),
])
def test_combine_rewards_rejects_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        registry.combine_rewards([GOOD], _ex(1), **kwargs)


def test_combine_rewards_rejects_mismatched_batch():
    with pytest.raises(ValueError, match="2 completions but 1 examples"):
        registry.combine_rewards([GOOD, GOOD], _ex(1), {"tag_count": 1.0})


# --- answers (verifier and sandbox) ---------------------------------------------------------------

def test_correctness_scores_hedged_answers_as_wrong():
    texts = [GOOD, "<think>\nx\n</think>\n<answer>41</answer>", "So \\boxed{6}. Or maybe \\boxed{42}.",
             "Thus \\boxed{0.5}, that is \\boxed{\\frac{1}{2}}.", "I do not know.", "#### 42"]
    golds = ["42", "42", "42", "1/2", "42", "42"]
    scores = R.correctness(texts, [{"answer": g} for g in golds])
    np.testing.assert_array_equal(scores, [1, 0, 0, 1, 0, 1])
    assert R.hedged(["\\boxed{6} \\boxed{42}", "\\boxed{0.5} \\boxed{\\frac12}", "\\boxed{3}"]) == [True, False, False]


def test_numeric_rewards_a_single_number():
    texts = ["\\boxed{42}", "\\boxed{3/4}", "#### 2.5", "\\boxed{x + 1}", "no answer", "\\boxed{1} \\boxed{2}",
             "\\boxed{7} and again \\boxed{7}"]
    np.testing.assert_array_equal(R.numeric(texts, _ex(len(texts))), [1, 1, 1, 0, 0, 0, 1])


def test_program_execution_runs_in_the_sandbox():
    texts = ["Plan.\n```python\nanswer = 6 * 7\n```",
             "```python\nanswer = 41\n```",
             "```python\nx = 6 * 7\nassert x == 41\nanswer = x\n```",
             "```python\nimport os\nanswer = 42\n```",
             "```py\nfrom fractions import Fraction\nprint(Fraction(84, 2))\n```",
             "no program, answer 42",
             "```python\nanswer = 1\n```\nfixed:\n```python\nanswer = 42\n```"]
    scores = R.program_execution(texts, _ex(len(texts)))
    np.testing.assert_array_equal(scores, [1, 0, 0, 0, 1, 0, 1])
    assert extract_program("```python\nx = 1\n```") == "x = 1\n"


def test_answer_rewards_name_a_missing_answer():
    with pytest.raises(ValueError, match="example 1 has no 'answer'"):
        R.correctness([GOOD, GOOD], [{"answer": "1"}, {"question": "q"}])
