"""Every registered reward is total: any completion text in, one finite float32 score per completion out.

The registry is iterated, so a new reward is covered without editing this file (one that needs
parameters gets them from PARAMS). Random completions come from hypothesis, built from the pieces the
rewards parse (tags, boxes, steps, code fences, numbers) and arbitrary text; the adversarial ones are fixed:
unbalanced tags, huge exponents, deep nesting, NUL bytes, 100 kB texts, programs that loop or import os.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxmath import rewards as registry
from jaxmath.verify import rewards as R

N = 100_000  # characters of the long adversarial texts
# Parameters a reward needs to run at all (a fixture name as value: built on first use).
PARAMS = {"program_execution": {"timeout": 1.0}, "prm_steps": "random_prm"}
EXAMPLES = {"program_execution": 10, "correctness": 30, "prm_steps": 10}  # default: 100 hypothesis examples
SLOW = {"prm_steps", "program_execution"}  # a model to load / a sandbox process per program

PIECES = ["<think>", "</think>", "<answer>", "</answer>", "< answer >", "<STEP 1>", "<STEP 2>", "</STEP>",
          "<begin_steps>", "</end_steps>", "@@@@", "####", "\\boxed{", "\\boxed ", "\\fbox{", "{", "}", "\\{", "(",
          ")", "[", "]", "$", "\\$", "\\%", "The answer is ", "Final Answer: ", "\nA: ", "\n", " ", "=", "+", "-", "*",
          "/", "^", "x", "10**10**10", "1e999999", "10^{10^{10}}", "9" * 60, "\\frac{1}{2}", "\\frac", "3,\\!250",
          "1{,}000", "1,234", "0.5", ".5", "7", "-3", "\\text{ cm}", "\\text{", "^\\circ", "\\sqrt{", "!", "\x00",
          "\u0661", "\u00b2", "\u2212", "```python\n", "```", "answer = 6 * 7\n", "import os\n", "while True: pass\n",
          "print(1)\n", "\\begin{pmatrix}", "\\\\", "&", "\\end{pmatrix}", "\\infty", "\\cup", "I hope it is correct"]

completions = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=12)), max_size=30).map("".join)
batches = st.lists(completions, min_size=1, max_size=4)

ADVERSARIAL = {
    "empty": "",
    "unbalanced tags": "<think>\n<answer>\n</think>\n</answer></answer><think>",
    "unclosed answers": "<answer>" * (N // 8),
    "unclosed steps": "<STEP 1>@@@@ 1 + 1 = 2 @@@@" * (N // 27),
    "unclosed boxes": "\\boxed{" * (N // 7),
    "huge exponents": "<STEP 1> @@@@ 10**10**10 = 1 @@@@ </STEP><STEP 2> @@@@ 1e999999 + 10 = 2 @@@@ </STEP>"
                      "\\boxed{10^{10^{10}}} #### 1e999999",
    "long digits": "<STEP 1> @@@@ 1 = 1 @@@@ </STEP><STEP 2> @@@@ " + "9" * 5000 + " = 1 @@@@ </STEP> "
                   "\\boxed{" + "9" * 5000 + "}",
    "latex steps": "<STEP 1> @@@@ 3 + 4 = 7 @@@@ </STEP><STEP 2> @@@@ \\frac{1}{2} + 2 = 2.5 @@@@ </STEP>",
    "deep nesting": "\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}" + "<STEP 1>@@@@ " + "(" * 400 + "1"
                    + ")" * 400 + " = 1 @@@@</STEP>",
    "deep braces": "\\boxed{" + "{" * 3000 + "}" * 3000 + "}",
    "nul bytes": "\x00" * N,
    "nul in answer": "<think>\n\x00\n</think>\n<answer>\n4\x002\n</answer>",
    "100 kB text": "The answer is " + "1 + " * (N // 4),
    "newlines": "\n" * N + "A: 1",
    "spaces": "The answer is" + " " * N + "x",
    "unit text": "\\boxed{5\\text{" + "a" * N + "!}}",
    "loop forever": "```python\nwhile True:\n    pass\n```",
    "import os": "```python\nimport os\nanswer = os.listdir('/')\n```",
    "huge power program": "```python\nanswer = 10**10**10\n```",
    "fork": "```python\nimport os\nos.fork()\nanswer = 42\n```",
}


@pytest.fixture(scope="module")
def random_prm(tmp_path_factory):
    """A randomly initialised tiny PRM saved as a jaxmath model directory (totality needs no training); texts
    over 5000 characters skip it (the default bound is 64 000: here the long texts test the skip, and the
    ~10 000-character ones would cost a minute of CPU attention)."""
    from flax import nnx

    from jaxmath.checkpoint.pretrained import save_jaxmath
    from jaxmath.data.tokenizer import train_tokenizer
    from jaxmath.models import ModelConfig, build_model

    tokenizer = train_tokenizer(["<STEP 1> 1 + 1 = 2 </STEP> \\boxed{2} The answer is 2."] * 20, vocab_size=300)
    hf = {"model_type": "qwen2", "architectures": ["Qwen2ForTokenClassification"], "num_labels": 2,
          "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
          "num_key_value_heads": 1, "max_position_embeddings": 256, "vocab_size": len(tokenizer)}
    model = build_model(ModelConfig.from_hf(hf, num_labels=2), seed=0)
    files = tmp_path_factory.mktemp("prm-tokenizer")
    tokenizer.save_pretrained(files)
    path = save_jaxmath(tmp_path_factory.mktemp("prm") / "model", nnx.to_pure_dict(nnx.state(model)), model.config,
                        hf, sorted(files.glob("*")))
    return {"model": str(path), "max_chars": 5000}


def _params(name: str, request: pytest.FixtureRequest) -> dict:
    params = PARAMS.get(name, {})
    return request.getfixturevalue(params) if isinstance(params, str) else params


def _check(name: str, texts: list[str], params: dict) -> np.ndarray:
    examples = [{"question": "What is 6 * 7?", "answer": "42"}] * len(texts)
    scores = registry.get_reward(name, **params)(texts, examples)
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float32, name
    assert scores.shape == (len(texts),), name
    assert np.all(np.isfinite(scores)), (name, texts, scores)
    return scores


def _registry():
    return [pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else []) for name in sorted(registry.REWARDS)]


@pytest.mark.parametrize("name", _registry())
def test_every_reward_is_total_on_random_completions(name, request):
    params = _params(name, request)

    @settings(max_examples=EXAMPLES.get(name, 100), deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(texts=batches)
    def run(texts):
        _check(name, texts, params)

    run()


@pytest.mark.parametrize("name", _registry())
def test_every_reward_is_total_on_adversarial_completions(name, request):
    texts = list(ADVERSARIAL.values())
    scores = _check(name, texts, _params(name, request))
    by_case = dict(zip(ADVERSARIAL, scores))
    if name in ("correctness", "program_execution"):  # nothing here states the answer 42 as asked
        assert not any(by_case.values()), by_case


def test_program_rewards_score_the_adversarial_programs_zero_and_a_good_one_one():
    """Within one batch: the looping, os-importing and huge-power programs score 0, the honest one 1."""
    texts = [ADVERSARIAL["loop forever"], ADVERSARIAL["import os"], ADVERSARIAL["huge power program"],
             "```python\nanswer = 6 * 7\n```"]
    scores = R.program_execution(texts, [{"answer": "42"}] * 4, timeout=1.0)
    np.testing.assert_array_equal(scores, [0, 0, 0, 1])


@pytest.mark.parametrize("text,arithmetic,chaining", [
    # The cases: a LaTeX fraction in a step, and a subtraction written without spaces.
    ("<STEP 1> @@@@ 3 + 4 = 7 @@@@ </STEP><STEP 2> @@@@ \\frac{1}{2} + 2 = 2.5 @@@@ </STEP>", 1.0, 0.0),
    ("<STEP 1> @@@@ 3 + 4 = 7 @@@@ </STEP><STEP 2> @@@@ 10-7 = 3 @@@@ </STEP>", 1.0, 1.0),
    ("<STEP 1> @@@@ 3 + 4 = 7 @@@@ </STEP><STEP 2> @@@@ 10 - 7 = 3 @@@@ </STEP>", 1.0, 1.0),
    # A sign is part of the number: -7 is the earlier result, 7 is not.
    ("<STEP 1> @@@@ 3 - 10 = -7 @@@@ </STEP><STEP 2> @@@@ -7 + 10 = 3 @@@@ </STEP>", 1.0, 1.0),
    ("<STEP 1> @@@@ 3 + 4 = 7 @@@@ </STEP><STEP 2> @@@@ 2 * -7 = -14 @@@@ </STEP>", 1.0, 0.0),
    ("<STEP 1> @@@@ 1 / 2 = 0.5 @@@@ </STEP><STEP 2> @@@@ \\frac{1}{2} \\times 4 = 2 @@@@ </STEP>", 1.0, 0.0),
    ("<STEP 1> @@@@ 6 / 4 = 1.5 @@@@ </STEP><STEP 2> @@@@ 1.5 \\cdot 2 = 3 @@@@ </STEP>", 1.0, 1.0),
    ("<STEP 1> @@@@ 1e999999 = 1 @@@@ </STEP>", 0.0, 1.0),
])
def test_step_rewards_read_latex_and_signs(text, arithmetic, chaining):
    assert R.step_arithmetic([text], [{}])[0] == pytest.approx(arithmetic)
    assert R.step_chaining([text], [{}])[0] == pytest.approx(chaining)


def test_a_step_without_a_closing_tag_is_not_a_step():
    """Linear step pairing keeps the regex's meaning: each opening pairs with the next closing."""
    text = "<STEP 1> @@@@ 1 + 1 = 2 @@@@ <STEP 2> @@@@ 2 + 2 = 4 @@@@ </STEP> <STEP 3> @@@@ 4 + 4 = 9 @@@@"
    assert R._step_equations(text) == [[" 1 + 1 = 2 ", " 2 + 2 = 4 "]]
