"""`jaxmath demo`: the whole loop on a laptop CPU with nothing downloaded.

Generate arithmetic problems, fit a tokenizer, train a tiny Qwen2-shaped model from scratch with the SFT
trainer, grade held-out answers with the sampler and the verifier, export to Hugging Face format and
reload it with `transformers` to answer one question.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from jaxmath.config import from_dict

DEMO_CONFIG: dict[str, Any] = {
    "objective": "sft",
    "model": {
        "init": {"model_type": "qwen2", "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
                 "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
    },
    "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
    "optimizer": {"lr": 3e-3, "schedule": "cosine", "warmup_steps": 20, "min_lr_ratio": 0.05, "b2": 0.98,
                  "weight_decay": 0.01, "clip_norm": 1.0},
    # Digit lookup and rounding are learnable in minutes on a CPU; addition with carries takes longer.
    "data": {"synthetic": {"numbers__place_value": 1500, "numbers__round_number": 1500,
                           "arithmetic__add_or_sub": 1000},
             "eval_fraction": 0.05, "format": "boxed", "tokenizer": "train", "tokenizer_vocab_size": 384,
             "seq_len": 128, "batch_size": 16},
    "train": {"steps": 400, "log_every": 50, "eval_every": 200, "eval_batches": 4, "eval_generate": 128,
              "eval_max_new_tokens": 48, "save_every": 200, "keep_checkpoints": 1},
}


def answer_with_transformers(hf_dir: Path, question: str) -> str:
    """Reload the export with transformers (torch) and answer one question greedily."""
    import transformers

    from jaxmath.data.formats import get_format, render_prompt

    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir)
    prompt = render_prompt(get_format("boxed"), question, tokenizer)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=48, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def run_demo(output_dir: str | Path, steps: int | None = None) -> dict[str, Any]:
    from jaxmath.train.config import TrainConfig
    from jaxmath.train.trainer import load_records, train

    out = Path(output_dir)
    raw = json.loads(json.dumps(DEMO_CONFIG))
    raw["output_dir"] = str(out)
    if steps is not None:
        raw["train"].update(steps=steps, eval_every=0, save_every=0)
    config = from_dict(TrainConfig, raw)
    start = time.perf_counter()
    print(f"[demo] 1/3 data, tokenizer and a randomly initialised model in {out}", flush=True)
    records = load_records(config)[1]  # the same seeded split the trainer holds out
    summary = train(config, out)  # grades held-out problems with the sampler and the verifier at each eval
    after = summary["eval_accuracy"]
    print("[demo] 2/3 trained and exported to Hugging Face format; reloading with transformers", flush=True)
    question = records[0].question
    try:
        reply = answer_with_transformers(out / "hf", question)
    except ImportError:
        reply = "(install torch to reload the export with transformers)"
    result = {"accuracy_after_sft": after, "held_out_problems": min(config.train.eval_generate, len(records)),
              "final_loss": summary["final_loss"], "eval_loss": summary["eval_loss"],
              "transformers_question": question, "transformers_reply": reply,
              "reference_answer": records[0].answer, "seconds": round(time.perf_counter() - start, 1)}
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print("[demo] 3/3 done\n")
    print(f"  held-out accuracy (greedy pass@1, {result['held_out_problems']} problems): {after:.1%}")
    print(f"  final train loss {summary['final_loss']:.3f}, eval loss {summary['eval_loss']:.3f}")
    print(f"  transformers, asked {question!r}: {reply.strip()!r} (reference {records[0].answer})")
    print(f"  files: {out}/ (metrics.jsonl, checkpoints/, final_model/, hf/, summary.json)")
    return result


def demo_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--output-dir", default="runs/demo", help="where the run's files go")
    parser.add_argument("--steps", type=int, default=None, help="SFT steps (default 400)")
    args = parser.parse_args(argv)
    run_demo(args.output_dir, args.steps)
    return 0
