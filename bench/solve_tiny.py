"""A tiny policy and PRM to compare `jaxmath eval --strategy ...` on (README "Solve problems").

Trains, on this CPU in about a minute, a Qwen2-shaped policy (SFT, 350 steps) and a PRM (60 steps) on the
synthetic step chains (jaxmath.prm.synthetic: "Start with 1. Add 1, then subtract 1. ..."; corrupted candidates
included, so the policy's samples are wrong about 40% of the time, and the PRM learns to spot a wrong step),
saves both as jaxmath model directories, and writes held-out chains as a local benchmark folder in the GSM8K
layout (`<out>/data/gsm8k/test.jsonl`, answers after `####`):

    python bench/solve_tiny.py --out runs/solve-tiny
    jaxmath eval --model runs/solve-tiny/policy --benchmarks gsm8k --data-dir runs/solve-tiny/data \\
        --strategy beam --prm runs/solve-tiny/prm --num-samples 4 --beam 2 --budget 400 ... --out results/

tests/test_solve_search.py trains the same models with `train_chain_models`.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from jaxmath.data.formats import get_format, render_prompt
from jaxmath.data.pipelines import PipelineOptions, prm_pipeline, sft_pipeline
from jaxmath.data.schema import Record
from jaxmath.data.tokenizer import train_tokenizer
from jaxmath.models import ModelConfig, build_model
from jaxmath.objectives import IGNORE_LABEL, make_loss
from jaxmath.parallel import make_mesh
from jaxmath.prm.synthetic import chain_problems
from jaxmath.train.optimizer import OptimizerConfig, make_optimizer
from jaxmath.train.step import setup_training

FMT = get_format("boxed")
# Operands of 1 keep the arithmetic learnable in a few hundred steps; a corrupted step is off by 10 or 20, which
# a tiny PRM learns to see in a few dozen.
CHAINS = dict(num_steps=(2, 3), max_value=9, max_operand=1, offsets=(-20, -10, 10, 20))
SHAPE = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}


def final_line(answer: str) -> str:
    """How a boxed-format solution of a chain ends."""
    return f"The final answer is $\\boxed{{{answer}}}$."


def _train(model: nnx.Module, loss: str, batches: Any, steps: int, lr: float) -> nnx.Module:
    """`steps` AdamW steps of objective `loss` on one device; the trained model."""
    first = next(batches)
    optimizer, _ = make_optimizer(OptimizerConfig(lr=lr, warmup_steps=10, clip_norm=1.0, schedule="cosine"), steps)
    state, step = setup_training(model, make_loss(loss), optimizer, make_mesh((1, 1, 1), jax.devices()[:1]), first)
    for batch in [first, *(next(batches) for _ in range(steps - 1))]:
        state, _ = step(state, batch)
    graphdef, graph_state = nnx.split(model)
    nnx.replace_by_pure_dict(graph_state, jax.device_get(state.params))
    return nnx.merge(graphdef, graph_state)


def _prm_labels(batch: dict) -> dict:
    """prm_pipeline's step arrays -> the [B, T] `labels` the PRM loss reads (IGNORE_LABEL off the step ends)."""
    import numpy as np

    labels = np.full(batch["input_ids"].shape, IGNORE_LABEL, np.int32)
    rows, steps = np.nonzero(batch["step_mask"])
    labels[rows, batch["step_positions"][rows, steps]] = batch["step_labels"][rows, steps]
    return {"input_ids": batch["input_ids"], "attention_mask": (batch["segment_ids"] > 0).astype(np.int32),
            "labels": labels}


def train_chain_models(problems: int = 400, policy_steps: int = 350, prm_steps: int = 60, seed: int = 0):
    """(policy, prm, tokenizer, hf configs) trained on `problems` chains of seed `seed`: the policy by SFT on every
    candidate (right and corrupted), the PRM on their step labels (the final-answer line takes the last step's)."""
    candidates = [(p, c) for p in chain_problems(problems, seed=seed, **CHAINS) for c in p["candidates"]]
    records = [Record(id=f"{p['id']}/{i}", question=p["question"], answer=c["final"], solution="\n".join(c["steps"]))
               for i, (p, c) in enumerate(candidates)]
    plain = train_tokenizer(["x"], vocab_size=300, chat_template=None)
    texts = [render_prompt(FMT, r.question, plain) + r.solution + final_line(r.answer) for r in records]
    tokenizer = train_tokenizer(texts, vocab_size=1000, chat_template=None)
    options = PipelineOptions(num_epochs=None, seed=seed)
    policy_hf = SHAPE | {"architectures": ["Qwen2ForCausalLM"], "vocab_size": len(tokenizer), "tie_word_embeddings": True}
    policy = _train(build_model(ModelConfig.from_hf(policy_hf), seed=seed), "sft",
                    iter(sft_pipeline(records, tokenizer, FMT, seq_len=96, batch_size=16, options=options)),
                    policy_steps, 8e-3)
    traces = [{"question": p["question"], "answer": p["answer"], "steps": c["steps"] + [final_line(c["final"])],
               "labels": c["labels"] + c["labels"][-1:]} for p, c in candidates]
    prm_hf = SHAPE | {"architectures": ["Qwen2ForTokenClassification"], "num_labels": 2, "vocab_size": len(tokenizer)}
    prm = _train(build_model(ModelConfig.from_hf(prm_hf, num_labels=2), seed=seed), "prm",
                 (_prm_labels(b) for b in prm_pipeline(traces, tokenizer, FMT, seq_len=96, max_steps=5, batch_size=32,
                                                       options=options)), prm_steps, 3e-3)
    return policy, prm, tokenizer, policy_hf, prm_hf


def main() -> None:
    """Train, save the two models and the held-out benchmark folder, print where they are."""
    from jaxmath.checkpoint.pretrained import save_jaxmath

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (policy/, prm/, data/)")
    parser.add_argument("--held-out", type=int, default=64, help="held-out chain problems in the benchmark")
    args = parser.parse_args()
    start = time.perf_counter()
    policy, prm, tokenizer, policy_hf, prm_hf = train_chain_models()
    with tempfile.TemporaryDirectory() as files:
        tokenizer.save_pretrained(files)
        side = sorted(Path(files).glob("*"))
        for name, model, hf in (("policy", policy, policy_hf), ("prm", prm, prm_hf)):
            save_jaxmath(args.out / name, nnx.to_pure_dict(nnx.state(model)), model.config, hf, side, overwrite=True)
    bench = args.out / "data" / "gsm8k"
    bench.mkdir(parents=True, exist_ok=True)
    with open(bench / "test.jsonl", "w", encoding="utf-8") as f:
        for p in chain_problems(args.held_out, seed=1, **CHAINS):
            f.write(json.dumps({"question": p["question"], "answer": f"#### {p['answer']}"}) + "\n")
    print(f"wrote {args.out}/policy, {args.out}/prm and {bench}/test.jsonl ({args.held_out} problems) in "
          f"{time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
