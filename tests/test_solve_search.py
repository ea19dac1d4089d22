"""Search pays off with trained models: bench/solve_tiny.py's tiny policy (SFT on the synthetic step chains,
corrupted candidates included, so its samples are often wrong) and tiny PRM (trained on the chains' step labels).
At the same token budget, step-level beam search ranked by the PRM answers more held-out problems than the same
search ranking at random (which also keeps the policy's rarer, more varied wrong steps, so it does worse than one
sample), and self-consistency over 8 samples answers more than one sample."""
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxmath.inference.config import PLAIN_TEXT_STOP, Sampling
from jaxmath.prm.scorer import PRMScorer
from jaxmath.prm.synthetic import chain_problems
from jaxmath.solve import MathSolver
from jaxmath.solve.policy import ModelPolicy
from jaxmath.verify import Verifier

BUDGET = 400  # generated tokens per question for both beam searches


class RandomScorer:
    """Uniform random step scores: search with no idea which steps are right."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def score_solutions(self, questions, solutions):
        from jaxmath.prm.steps import step_texts

        return [self.rng.random(len(step_texts(s))).astype(np.float32) for s in solutions]


@pytest.fixture(scope="module")
def trained():
    """The policy (sampled at temperature 1) and PRM of bench/solve_tiny.py, trained here."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        from solve_tiny import CHAINS, FMT, train_chain_models
    finally:
        sys.path.pop(0)
    policy, prm, tokenizer, _, _ = train_chain_models()
    sampling = Sampling(max_new_tokens=48, temperature=1.0, seed=0, stop_strings=(PLAIN_TEXT_STOP,))
    return (ModelPolicy(policy, tokenizer, [tokenizer.eos_token_id], sampling, batch_size=64),
            PRMScorer(prm, tokenizer, FMT, batch_size=64), CHAINS, FMT)


@pytest.mark.slow
def test_prm_beam_beats_random_beam_at_equal_budget_and_voting_beats_one_sample(trained):
    policy, prm, chains, fmt = trained
    held_out = chain_problems(32, seed=1, **chains)
    questions, golds = [p["question"] for p in held_out], [p["answer"] for p in held_out]

    def run(scorer, **settings):
        results = MathSolver.from_policy(policy, fmt, scorer, verifier, **settings).solve_batch(questions)
        return results, np.mean([r.answer == gold for r, gold in zip(results, golds)])

    with Verifier(workers=1) as verifier:
        search = dict(strategy="beam", samples=4, beam=2, budget=BUDGET, max_steps=6, step_tokens=16)
        prm_results, prm_beam = run(prm, **search)
        random_results, random_beam = run(RandomScorer(0), **search)
        voted_results, voted = run(None, strategy="self_consistency", samples=8)
    # one sample's accuracy, over all 8 x 32 samples the vote saw
    single = np.mean([c.answer == gold for r, gold in zip(voted_results, golds) for c in r.candidates])
    tokens = {name: np.mean([r.tokens for r in results]) for name, results in
              [("prm", prm_results), ("random", random_results), ("voted", voted_results)]}
    print(f"beam+PRM {prm_beam:.2f} ({tokens['prm']:.0f} tok/q), beam+random {random_beam:.2f} "
          f"({tokens['random']:.0f}), one sample {single:.2f} ({tokens['voted'] / 8:.0f}), self-consistency@8 "
          f"{voted:.2f} ({tokens['voted']:.0f})")
    assert max(r.tokens for r in prm_results + random_results) <= BUDGET
    assert prm_beam >= random_beam + 0.2 and prm_beam >= single + 0.15  # random ranking, or one random sample
    assert 0.2 <= single <= 0.9  # the policy is right often, but not always: there is something to search for
    assert voted >= single + 0.1
