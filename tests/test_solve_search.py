"""Search pays off with trained models: a tiny policy (SFT on the synthetic step chains, corrupted candidates
included, so its samples are wrong about 40% of the time) and a tiny PRM (trained on the same chains' step labels).
At the same token budget, step-level beam search ranked by the PRM answers more held-out problems than the same
search ranking at random (which also keeps the policy's rarer, more varied wrong steps, so it does worse than one
sample), and self-consistency over 8 samples answers more than one sample."""
import jax
import numpy as np
import pytest
from flax import nnx

from jaxmath.data.formats import get_format, render_prompt
from jaxmath.data.pipelines import PipelineOptions, prm_pipeline, sft_pipeline
from jaxmath.data.schema import Record
from jaxmath.data.tokenizer import train_tokenizer
from jaxmath.inference.config import PLAIN_TEXT_STOP, Sampling
from jaxmath.models import ModelConfig, build_model
from jaxmath.objectives import make_loss
from jaxmath.parallel import make_mesh
from jaxmath.prm.scorer import PRMScorer
from jaxmath.prm.synthetic import chain_problems
from jaxmath.solve import MathSolver
from jaxmath.solve.policy import ModelPolicy
from jaxmath.train.optimizer import OptimizerConfig, make_optimizer
from jaxmath.train.step import setup_training
from jaxmath.verify import Verifier
from test_prm import PRM_HF_CONFIG, prm_batch

FMT = get_format("boxed")
# Operands of 1 keep the arithmetic learnable in a few hundred steps; a corrupted step is off by 10 or 20, which
# a tiny PRM learns to see (test_prm's DETECTABLE chains).
CHAINS = dict(num_steps=(2, 3), max_value=9, max_operand=1, offsets=(-20, -10, 10, 20))
POLICY_HF_CONFIG = PRM_HF_CONFIG | {"architectures": ["Qwen2ForCausalLM"], "num_labels": None}
BUDGET = 400  # generated tokens per question for both beam searches


def final_line(answer):
    return f"The final answer is $\\boxed{{{answer}}}$."


def train(model, loss, batches, steps, lr):
    """`steps` AdamW steps of `loss` on one device; the trained model."""
    first = next(batches)
    optimizer, _ = make_optimizer(OptimizerConfig(lr=lr, warmup_steps=10, clip_norm=1.0, schedule="cosine"), steps)
    state, step = setup_training(model, make_loss(loss), optimizer, make_mesh((1, 1, 1), jax.devices()[:1]), first)
    for batch in [first, *(next(batches) for _ in range(steps - 1))]:
        state, _ = step(state, batch)
    graphdef, graph_state = nnx.split(model)
    nnx.replace_by_pure_dict(graph_state, jax.device_get(state.params))
    return nnx.merge(graphdef, graph_state)


class RandomScorer:
    """Uniform random step scores: search with no idea which steps are right."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def score_solutions(self, questions, solutions):
        from jaxmath.prm.steps import step_texts

        return [self.rng.random(len(step_texts(s))).astype(np.float32) for s in solutions]


@pytest.fixture(scope="module")
def trained():
    problems = chain_problems(400, seed=0, **CHAINS)
    candidates = [(p, c) for p in problems for c in p["candidates"]]
    records = [Record(id=f"{p['id']}/{i}", question=p["question"], answer=c["final"], solution="\n".join(c["steps"]))
               for i, (p, c) in enumerate(candidates)]
    plain = train_tokenizer(["x"], vocab_size=300, chat_template=None)
    texts = [render_prompt(FMT, r.question, plain) + r.solution + final_line(r.answer) for r in records]
    tokenizer = train_tokenizer(texts, vocab_size=1000, chat_template=None)
    options = PipelineOptions(num_epochs=None, seed=0)
    config = POLICY_HF_CONFIG | {"vocab_size": len(tokenizer), "tie_word_embeddings": True}
    policy = train(build_model(ModelConfig.from_hf(config), seed=0), "sft",
                   iter(sft_pipeline(records, tokenizer, FMT, seq_len=96, batch_size=16, options=options)), 350, 8e-3)
    traces = [{"question": p["question"], "answer": p["answer"], "steps": c["steps"] + [final_line(c["final"])],
               "labels": c["labels"] + c["labels"][-1:]} for p, c in candidates]
    prm = train(build_model(ModelConfig.from_hf(PRM_HF_CONFIG | {"vocab_size": len(tokenizer)}, num_labels=2), seed=0),
                "prm", (prm_batch(b) for b in prm_pipeline(traces, tokenizer, FMT, seq_len=96, max_steps=5,
                                                           batch_size=32, options=options)), 60, 3e-3)
    sampling = Sampling(max_new_tokens=48, temperature=1.0, seed=0, stop_strings=(PLAIN_TEXT_STOP,))
    return (ModelPolicy(policy, tokenizer, [tokenizer.eos_token_id], sampling, batch_size=64),
            PRMScorer(prm, tokenizer, FMT, batch_size=64))


@pytest.mark.slow
def test_prm_beam_beats_random_beam_at_equal_budget_and_voting_beats_one_sample(trained):
    policy, prm = trained
    held_out = chain_problems(32, seed=1, **CHAINS)
    questions, golds = [p["question"] for p in held_out], [p["answer"] for p in held_out]

    def run(scorer, **settings):
        results = MathSolver.from_policy(policy, FMT, scorer, verifier, **settings).solve_batch(questions)
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
