"""`jaxmath demo`: the whole loop on a laptop CPU with nothing downloaded.

Generate two-digit addition problems, fit a tokenizer, train a tiny Qwen2-shaped model from scratch with
the SFT trainer, then improve it with GRPO (rewards from the verifier), grading the same held-out problems
greedily before and after; export to Hugging Face format and reload it with `transformers` to answer one
question. Everything lands in the output directory: sft/ and grpo/ run directories (config, metrics,
checkpoints, final_model/, hf/), summary.json and grpo_progress.png.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

from jaxmath.commands.options import add_compile_cache_argument, add_quiet_argument
from jaxmath.config import from_dict
from jaxmath.progress import configure_logging

MODEL = {"model_type": "qwen2", "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
         "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True}
# Both stages read the same seeded problems and hold out the same 5% (same generators, seed, fraction).
DATA = {"synthetic": {"arithmetic__add_small": 3000}, "eval_fraction": 0.05, "format": "boxed", "seq_len": 256}
HELD_OUT = 128  # held-out problems graded greedily before and after GRPO
ANSWER_TOKENS = 64
log = logging.getLogger(__name__)

SFT_CONFIG: dict[str, Any] = {
    "objective": "sft",
    "model": {"init": MODEL},
    "mesh": {"data": -1, "fsdp": 1, "tensor": 1},
    "optimizer": {"lr": 3e-3, "schedule": "cosine", "warmup_steps": 20, "min_lr_ratio": 0.05, "b2": 0.98,
                  "weight_decay": 0.01, "clip_norm": 1.0},
    "data": {**DATA, "tokenizer": "train", "tokenizer_vocab_size": 384, "batch_size": 16},
    "train": {"steps": 400, "log_every": 50, "eval_every": 0, "eval_batches": 4, "eval_generate": HELD_OUT,
              "eval_max_new_tokens": ANSWER_TOKENS, "save_every": 200, "keep_checkpoints": 1},
}

GRPO_CONFIG: dict[str, Any] = {
    "objective": "grpo",
    "mesh": {"data": -1, "fsdp": 1, "tensor": 1},
    # RL wants a learning rate ~100x below SFT's: larger steps push the sampled wrong answers down so hard
    # that probability mass spills onto other wrong answers (measured: 1e-4 lowered held-out accuracy).
    "optimizer": {"lr": 2e-5, "schedule": "constant", "clip_norm": 1.0, "b2": 0.98},
    "data": dict(DATA),
    "grpo": {"group_size": 8, "prompts_per_step": 8, "max_prompt_len": 64,
             "sampling": {"max_new_tokens": ANSWER_TOKENS, "temperature": 1.0},
             "rewards": {"correctness": 1.0, "numeric": 0.5},
             "loss": {"beta": 0.0, "epsilon": 0.2, "epsilon_high": 0.28, "aggregation": "token_mean"},
             "mu": 1, "minibatches": 2, "overlong": "zero"},
    "train": {"steps": 40, "log_every": 1, "eval_every": 10, "eval_generate": HELD_OUT,
              "eval_max_new_tokens": ANSWER_TOKENS, "save_every": 20, "keep_checkpoints": 1},
}


def answer_with_transformers(hf_dir: Path, question: str) -> str:
    """Reload the export with transformers (torch) and answer one question greedily."""
    import transformers

    from jaxmath.data.formats import get_format, render_prompt

    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir)
    prompt = render_prompt(get_format("boxed"), question, tokenizer)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=ANSWER_TOKENS, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def stage_configs(out: Path, sft_steps: int | None = None, grpo_steps: int | None = None,
                  problems: dict[str, int] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The SFT and GRPO run configs (plain dicts) of a demo writing into `out`; `problems` replaces the
    generator -> count mapping of both stages."""
    sft, grpo = copy.deepcopy(SFT_CONFIG), copy.deepcopy(GRPO_CONFIG)
    if problems is not None:
        sft["data"]["synthetic"] = grpo["data"]["synthetic"] = dict(problems)
    sft["output_dir"], grpo["output_dir"] = str(out / "sft"), str(out / "grpo")
    grpo["model"] = {"path": str(out / "sft" / "final_model")}
    grpo["data"]["tokenizer"] = str(out / "sft" / "tokenizer")
    if sft_steps is not None:
        sft["train"].update(steps=sft_steps, save_every=0)
    if grpo_steps is not None:
        grpo["train"].update(steps=grpo_steps, eval_every=0, save_every=0, log_every=1)
    return sft, grpo


def run_demo(output_dir: str | Path, sft_steps: int | None = None, grpo_steps: int | None = None,
             held_out: int | None = None, problems: dict[str, int] | None = None,
             quiet: bool = False, compile_cache: str | None = None) -> dict[str, Any]:
    """SFT -> GRPO -> export -> transformers, with before/after held-out accuracy; returns summary.json.
    `quiet` turns the training progress bars off; `compile_cache` sets both stages' train.compile_cache
    (default: auto)."""
    from jaxmath.train.config import TrainConfig
    from jaxmath.train.metrics import plot_metrics
    from jaxmath.train.trainer import load_records, train

    out = Path(output_dir)
    sft_raw, grpo_raw = stage_configs(out, sft_steps, grpo_steps, problems)
    for raw in (sft_raw, grpo_raw):
        if held_out is not None:
            raw["train"]["eval_generate"] = held_out
        if compile_cache is not None:
            raw["train"]["compile_cache"] = compile_cache
    sft_config, start = from_dict(TrainConfig, sft_raw), time.perf_counter()
    log.info("[demo] 1/4 SFT: a tokenizer and a randomly initialised %d-layer model on %s problems, in %s",
             MODEL["num_hidden_layers"], ", ".join(sft_raw["data"]["synthetic"]), out / "sft")
    sft_summary = train(sft_config, sft_config.output_dir, progress=not quiet)
    log.info("[demo] 2/4 GRPO: %d samples per problem, verifier rewards, in %s", grpo_raw["grpo"]["group_size"],
             out / "grpo")
    grpo_config = from_dict(TrainConfig, grpo_raw)
    grpo_summary = train(grpo_config, grpo_config.output_dir, progress=not quiet)
    log.info("[demo] 3/4 exported to Hugging Face format; reloading with transformers")
    record = load_records(grpo_config)[1][0]  # a held-out problem
    try:
        reply = answer_with_transformers(out / "grpo" / "hf", record.question)
    except ImportError:
        reply = "(install torch to reload the export with transformers)"
    plot = plot_metrics(out / "grpo" / "metrics.jsonl",
                        {"reward (rollouts)": "reward_mean", "held-out accuracy (greedy)": "eval_accuracy"},
                        out / "grpo_progress.png", title="GRPO: " + ", ".join(grpo_raw["data"]["synthetic"]))
    result = {"accuracy_before_grpo": grpo_summary["accuracy_before"],
              "accuracy_after_grpo": grpo_summary["accuracy_after"],
              "accuracy_after_sft": sft_summary["eval_accuracy"],
              "held_out_problems": grpo_config.train.eval_generate,
              "sft_final_loss": sft_summary["final_loss"], "sft_eval_loss": sft_summary["eval_loss"],
              "grpo_final_reward_mean": grpo_summary["reward_mean"],
              "transformers_question": record.question, "transformers_reply": reply,
              "reference_answer": record.answer, "plot": str(plot),
              "seconds": round(time.perf_counter() - start, 1)}
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    before, after = result["accuracy_before_grpo"], result["accuracy_after_grpo"]
    log.info("[demo] 4/4 done")
    print(f"  held-out accuracy, greedy pass@1 on {result['held_out_problems']} problems:")
    print("  | model        | accuracy |")
    print("  |--------------|----------|")
    print(f"  | after SFT    | {before:8.1%} |")
    print(f"  | after GRPO   | {after:8.1%} |")
    print(f"  transformers, asked {record.question!r}: {reply.strip()!r} (reference {record.answer})")
    print(f"  files: {out}/ (sft/, grpo/, summary.json, grpo_progress.png) in {result['seconds']:.0f}s")
    return result


def demo_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/demo", help="where the run's files go (default runs/demo)")
    parser.add_argument("--sft-steps", type=int, default=None, help=f"SFT steps (default {SFT_CONFIG['train']['steps']})")
    parser.add_argument("--grpo-steps", type=int, default=None,
                        help=f"GRPO iterations (default {GRPO_CONFIG['train']['steps']})")
    parser.add_argument("--held-out", type=int, default=None, help=f"held-out problems graded (default {HELD_OUT})")
    parser.add_argument("--problems", nargs="+", default=None, metavar="GENERATOR=COUNT",
                        help="generated problems for both stages (default "
                             + " ".join(f"{k}={v}" for k, v in DATA["synthetic"].items()) + ")")
    add_quiet_argument(parser)
    add_compile_cache_argument(parser)
    args = parser.parse_args(argv)
    configure_logging(args.quiet)
    problems = None
    if args.problems:
        try:
            problems = {name: int(count) for name, count in (item.split("=", 1) for item in args.problems)}
        except ValueError:
            parser.error(f"--problems takes GENERATOR=COUNT items, got {args.problems}")
    run_demo(args.output_dir, args.sft_steps, args.grpo_steps, args.held_out, problems, args.quiet,
             args.compile_cache)
    return 0
