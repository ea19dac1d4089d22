"""MathSolver's strategies on scripted policies and PRMs with hand-computed outcomes: the result object, votes by
the verifier's equivalence (0.5 and \\frac12 vote together), PRM tie-breaks and picks, step-level beam and tree
search, budgets, pot repair from the sandbox's error, settings errors, and untrusted text in (hypothesis)."""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxmath.solve import STRATEGIES, MathSolver, SolveResult
from jaxmath.solve.policy import Budget
from jaxmath.solve.strategies import STRATEGY_FUNCTIONS
from jaxmath.solve.voting import answer_classes, verifier_compare, vote
from jaxmath.verify import Verifier
from solve_fakes import ArithmeticPRM, ScriptedPolicy

QUESTION = "Start with 2. Add 1, then add 1. What is the result?"


@pytest.fixture(scope="module")
def verifier():
    with Verifier(workers=1) as v:
        yield v


def solver(reply, verifier, scorer=None, **settings):
    return MathSolver.from_policy(ScriptedPolicy(reply), "boxed", scorer, verifier, **settings)


def cycle(*replies):
    return lambda prompt, call: replies[call % len(replies)]


class ContainsPRM:
    """Scores every step 0.8 when the solution contains `marker`, else 0.3."""

    def __init__(self, marker):
        self.marker = marker

    def score_solutions(self, questions, solutions):
        return [np.full(1, 0.8 if self.marker in s else 0.3, np.float32) for s in solutions]


def test_strategy_registry_matches_the_names_the_command_line_offers():
    assert tuple(STRATEGY_FUNCTIONS) == STRATEGIES


def test_answer_classes_group_equivalent_spellings(verifier):
    compare = verifier_compare(verifier)
    assert answer_classes(["\\frac12", "3", "0.5", "3", None, "1/2"], compare) == [[0, 2, 5], [1, 3]]
    assert answer_classes([None, None], compare) == []
    votes, members = vote(["7", "8", "8", "7"], compare, [0.1, 0.9, 0.2, 0.3])
    assert [(v.answer, v.count, v.score) for v in votes] == [("8", 2, 0.9), ("7", 2, 0.3)]  # tie: better PRM score
    assert members == [[1, 2], [0, 3]]
    votes, _ = vote(["7", "8", "8", "7"], compare)
    assert [v.answer for v in votes] == ["7", "8"]  # tie without a PRM: the answer seen first


def test_self_consistency_votes_by_equivalence_and_reports_tokens(verifier):
    replies = ["So \\boxed{0.5}.", "It is \\boxed{\\frac12}", "\\boxed{3}", "\\boxed{3}", "Thus \\boxed{1/2}"]
    result = solver(cycle(*replies), verifier, strategy="self_consistency", samples=5).solve("Half of 1?")
    assert result.answer == "0.5" and result.solution == replies[0]
    assert [(v.answer, v.count) for v in result.votes] == [("0.5", 3), ("3", 2)]
    assert result.chosen_by == "majority vote: 3 of 5 samples agree"
    assert result.tokens == sum(len(r) + 1 for r in replies)
    assert [c.answer for c in result.candidates] == ["0.5", "\\frac{1}{2}", "3", "3", "1/2"]


def test_self_consistency_tie_goes_to_the_prm_score(verifier):
    result = solver(cycle("\\boxed{7}", "\\boxed{8}"), verifier, ContainsPRM("8"), strategy="self_consistency",
                    samples=2).solve("?")
    assert result.answer == "8" and result.chosen_by.endswith("(tie broken by PRM score)")
    assert [v.score for v in result.votes] == pytest.approx([0.8, 0.3])


def test_cot_normalises_the_answer_and_the_result_round_trips_as_json(verifier):
    result = solver(cycle("x = 1/2, so \\boxed{\\dfrac{1}{2}}"), verifier).solve("?")
    assert result.answer == "\\frac{1}{2}" and result.strategy == "cot" and result.tokens == 33
    data = json.loads(result.to_json())
    assert data == result.to_dict()
    assert data["candidates"] == [{"solution": "x = 1/2, so \\boxed{\\dfrac{1}{2}}", "answer": "\\frac{1}{2}",
                                   "tokens": 33, "score": None, "program": None}]
    assert set(data) == {"question", "answer", "solution", "strategy", "chosen_by", "tokens", "budget",
                         "candidates", "votes", "program", "rounds"}


def test_best_of_n_takes_the_prm_pick(verifier):
    wrong, right = "2 + 1 = 4\n\\boxed{4}", "2 + 1 = 3\n\\boxed{3}"
    result = solver(cycle(wrong, right, wrong), verifier, ArithmeticPRM(), strategy="best_of_n", samples=3).solve("?")
    assert result.answer == "3" and [c.score for c in result.candidates] == pytest.approx([0.1, 0.9, 0.1])


def chain_reply(prompt, call):
    """Continues `2 + 1 = 3` chains: two steps, right on even calls and off by 10 on odd ones, then the answer."""
    prefix = prompt.rsplit("<assistant>", 1)[1]
    lines = prefix.splitlines()
    value = int(lines[-1].split("= ")[1]) if lines else 2
    if len(lines) == 2:
        return f"The answer is \\boxed{{{value}}}."
    return f"{value} + 1 = {value + 1 if call % 2 == 0 else value + 11}\n"


def test_beam_keeps_the_steps_the_prm_prefers(verifier):
    policy = ScriptedPolicy(chain_reply)
    result = MathSolver.from_policy(policy, "boxed", ArithmeticPRM(), verifier, strategy="beam", samples=2,
                                    beam=1).solve(QUESTION)
    assert result.answer == "4" and result.solution == "2 + 1 = 3\n3 + 1 = 4\nThe answer is \\boxed{4}."
    final = len("The answer is \\boxed{4}.") + 1
    assert result.tokens == 10 + 11 + 10 + 11 + 2 * final  # two samples per step, each to its newline
    assert len(policy.prompts) == 6 and result.candidates[0].score == pytest.approx(0.9)
    assert result.chosen_by == "beam search (b=1, k=2): highest PRM score of 1 finished solutions"


def test_beam_stops_within_its_budget(verifier):
    result = solver(chain_reply, verifier, ArithmeticPRM(), strategy="beam", samples=2, beam=1,
                    budget=25).solve(QUESTION)
    # step 1 gets 12 tokens a row (both fit: 10 + 11), step 2 only (25 - 21) // 2 = 2 a row, then nothing is left
    assert result.tokens == 25 and result.budget == 25 and result.answer is None
    assert "no solution finished within the budget" in result.chosen_by


def test_tree_search_finds_the_right_chain(verifier):
    result = solver(chain_reply, verifier, ArithmeticPRM(), strategy="tree", samples=2, iterations=8,
                    max_steps=4).solve(QUESTION)
    assert result.answer == "4" and result.solution == "2 + 1 = 3\n3 + 1 = 4\nThe answer is \\boxed{4}."
    finished = [c for c in result.candidates if c.answer is not None]
    assert len(finished) > 1 and all(c.score == pytest.approx(0.1) for c in finished if c.answer != "4")


def test_every_strategy_respects_a_budget(verifier):
    for strategy in STRATEGIES:
        result = solver(chain_reply, verifier, ArithmeticPRM(), strategy=strategy, samples=3, budget=40,
                        iterations=4).solve(QUESTION)
        assert 0 < result.tokens <= 40, strategy
    starved = solver(cycle("\\boxed{1}"), verifier, strategy="self_consistency", samples=8, budget=7).solve("?")
    assert starved.tokens == 0 and starved.answer is None and starved.chosen_by == "no answer in 0 samples"
    assert Budget(10).grant(3, 64) == 3 and Budget().grant(3, 64) == 64


CRASH = "```python\nanswer = [1, 2][5]\n```"
FIXED = "```python\nx = 6 * 7\nprint(x)\nanswer = x\n```"


def test_pot_repairs_a_failing_program_from_the_sandbox_error(verifier):
    policy = ScriptedPolicy(lambda prompt, call: FIXED if "Running your program failed" in prompt else CRASH)
    result = MathSolver.from_policy(policy, "boxed", None, verifier, strategy="pot", repair_rounds=2).solve("6*7?")
    assert result.answer == "42" and result.rounds == 1 and result.solution == FIXED
    assert result.program.program == "x = 6 * 7\nprint(x)\nanswer = x\n" and result.program.output == "42\n"
    assert result.program.status == "ok" and result.chosen_by == "the program's answer after 1 repair round(s)"
    first = result.candidates[0]
    assert first.answer is None and first.program.status == "error" and "IndexError" in first.program.error
    assert "IndexError: list index out of range" in policy.prompts[1] and CRASH in policy.prompts[1]
    assert "Python program" in policy.prompts[0]  # the pot format's instructions, whatever the solver's format
    assert result.tokens == len(CRASH) + len(FIXED) + 2

    always = MathSolver.from_policy(ScriptedPolicy(cycle(CRASH)), "boxed", None, verifier, strategy="pot",
                                    repair_rounds=2).solve("6*7?")
    assert always.answer is None and always.rounds == 2 and always.chosen_by == "no program ran cleanly in 3 attempt(s)"


def test_bad_settings_and_questions_are_named(verifier):
    with pytest.raises(ValueError, match="unknown strategy 'nope'; choose one of cot, pot"):
        solver(cycle("x"), verifier, strategy="nope")
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        solver(cycle("x"), verifier, samples=0)
    with pytest.raises(ValueError, match="budget must be None or an integer >= 1"):
        solver(cycle("x"), verifier, budget=0)
    with pytest.raises(ValueError, match="strategy 'beam' ranks solutions with a process reward model"):
        solver(cycle("x"), verifier).solve("?", strategy="beam")
    with pytest.raises(ValueError, match="question 1 must be a non-empty string"):
        solver(cycle("x"), verifier).solve_batch(["ok", "  "])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(question=st.text(max_size=60), completion=st.text(max_size=80),
       strategy=st.sampled_from(["cot", "self_consistency", "best_of_n", "beam", "tree"]))
def test_any_question_and_completion_give_a_result_or_a_clear_error(verifier, question, completion, strategy):
    s = solver(lambda prompt, call: completion, verifier, ArithmeticPRM(), strategy=strategy, samples=2, beam=1,
               budget=300, max_steps=3, iterations=3)
    try:
        result = s.solve(question)
    except ValueError as err:
        assert not question.strip() and "question 0 must be a non-empty string" in str(err)
        return
    assert isinstance(result, SolveResult) and 0 <= result.tokens <= 300
    assert result.answer is None or isinstance(result.answer, str)
    json.loads(result.to_json())
