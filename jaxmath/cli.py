"""The `jaxmath` command. Each subcommand is also reachable through a thin script (convert/*.py, launch/*.py).

    jaxmath convert hf-to-jax --hf path/to/hf_dir --out ckpt/ [--dtype bfloat16]
    jaxmath convert jax-to-hf --ckpt ckpt/ --out hf_out/ [--dtype bfloat16] [--max-shard-size 5GB]
    jaxmath demo [--output-dir runs/demo]   SFT then GRPO on a CPU in minutes, nothing downloaded
    jaxmath train --config configs/{sft,grpo,dpo,prm}/tiny-cpu.yaml [--set key=value] [--resume] [--dry-run]
    jaxmath pipeline --config configs/pipeline/tiny-cpu.yaml [--from-stage dpo]
    jaxmath data build ...            (see `jaxmath data build --help`)
    jaxmath data synthesize --teacher URL_OR_PATH --input problems.jsonl --output pot.jsonl
    jaxmath data revise --teacher URL_OR_PATH --input problems.jsonl --rounds 2 --output-dir revise/
    jaxmath data prm-filter --in samples.jsonl --prm prm_dir --out kept.jsonl [--threshold 0.6]
    jaxmath data pairs ...            DPO pairs from graded samples (see `jaxmath data pairs --help`)
    jaxmath eval --model ckpt_or_hf_dir --benchmarks gsm8k math500 --data-dir ../shared/data --out results/
                 [--repair-rounds R]
    jaxmath generate --model ckpt_or_hf_dir --prompt "What is 17 * 23?" [--max-new-tokens 256]
    jaxmath push --model run/hf --repo user/name [--private] [--dry-run]   upload to the Hugging Face Hub
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

DTYPE_CHOICES = ["float32", "bfloat16", "float16"]


def hf_to_jax_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Convert a HF checkpoint directory into a jaxmath model directory (Orbax), streaming tensors."""
    from jaxmath.checkpoint import CheckpointError, convert_hf_to_jax
    from jaxmath.models import UnsupportedConfigError

    parser = argparse.ArgumentParser(prog=prog, description=hf_to_jax_main.__doc__)
    parser.add_argument("--hf", required=True, help="HF checkpoint directory (config.json + *.safetensors)")
    parser.add_argument("--out", required=True, help="output jaxmath model directory (written atomically)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                        help="parameter dtype to store (default: the checkpoint's own)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    return _timed(lambda: convert_hf_to_jax(args.hf, args.out, dtype=args.dtype, overwrite=args.overwrite,
                                            progress=True),
                  (CheckpointError, UnsupportedConfigError, FileExistsError))


def jax_to_hf_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Export a jaxmath model directory to a HF checkpoint that `transformers` loads."""
    from jaxmath.checkpoint import CheckpointError, export_to_hf

    parser = argparse.ArgumentParser(prog=prog, description=jax_to_hf_main.__doc__)
    parser.add_argument("--ckpt", required=True, help="jaxmath model directory (from hf-to-jax or a trainer)")
    parser.add_argument("--out", required=True, help="output HF directory (written atomically)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                        help="dtype of the exported tensors (default: the checkpoint's parameter dtype)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard, e.g. 5GB or 500MB")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    return _timed(lambda: export_to_hf(args.ckpt, args.out, dtype=args.dtype, max_shard_size=args.max_shard_size,
                                       overwrite=args.overwrite, progress=True),
                  (CheckpointError, FileExistsError, ValueError))


def _timed(job: Callable[[], object], expected: tuple[type[BaseException], ...]) -> int:
    """Run a job, print where it wrote and how long it took; expected errors become one line and exit 1."""
    start = time.perf_counter()
    try:
        out = job()
    except expected as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s")
    return 0


def train_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Train (or resume, or dry-run) a run described by a YAML config plus dotted overrides."""
    import json
    import logging

    from jaxmath.config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog=prog, description=train_main.__doc__)
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optimizer.lr=1e-5 (repeatable)")
    parser.add_argument("--output-dir", default=None, help="run directory (default: the config's output_dir)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--dry-run", action="store_true",
                        help="compile the train step and print per-device memory (with model.remat: auto, a "
                             "table of every remat option and the one training would take); loads no weights")
    parser.add_argument("--wandb-project", default=None, metavar="NAME",
                        help="log to this Weights & Biases project (sets logging.wandb.project)")
    args = parser.parse_args(argv)
    if args.wandb_project is not None:
        args.set.insert(0, f"logging.wandb.project={json.dumps(args.wandb_project)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every array it writes at INFO
    from jaxmath.tracking import TrackingError
    from jaxmath.train.config import TrainConfig
    from jaxmath.train.publish import PublishError
    from jaxmath.train.trainer import TrainingError, dry_run, train
    from jaxmath.verify.sandbox import SandboxUnavailable

    try:
        config = load_config(TrainConfig, args.config, args.set)
        if args.dry_run:
            report = dry_run(config, args.output_dir)
            if "remat_options" in report:
                from jaxmath.train.remat import format_options
                print(format_options(report["remat_options"]))
            print(json.dumps(report, indent=2))
            return 0
        print(json.dumps(train(config, args.output_dir, resume=args.resume), indent=2))
    except (ConfigError, TrainingError, FileNotFoundError, ValueError, SandboxUnavailable, TrackingError,
            PublishError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def push_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Upload a HF export (or a PEFT adapter directory) to the Hugging Face Hub with a generated model card."""
    parser = argparse.ArgumentParser(prog=prog, description=push_main.__doc__)
    parser.add_argument("--model", required=True, help="HF export directory (e.g. runs/x/hf) or PEFT adapter "
                                                       "directory (runs/x/hf_adapter)")
    parser.add_argument("--repo", required=True, help="Hub repository id, user/name (created if absent)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--run-dir", default=None,
                        help="training run whose config and results go into the card (default: the export's "
                             "parent when it holds config.yaml)")
    parser.add_argument("--token", default=None, help="Hub token (default: $HF_TOKEN or `hf auth login`)")
    parser.add_argument("--dry-run", action="store_true", help="print the files and the model card; upload nothing")
    args = parser.parse_args(argv)
    from huggingface_hub.errors import HfHubHTTPError

    from jaxmath.train.publish import PublishError, check_repo_id, model_card, push_to_hub, upload_files

    try:
        if args.dry_run:
            check_repo_id(args.repo)
            files = upload_files(args.model)
            print(model_card(args.model, args.repo, args.run_dir))
            print(f"--- would upload to {args.repo}: {', '.join(files)}, README.md")
            return 0
        print(f"pushed: {push_to_hub(args.model, args.repo, args.private, args.run_dir, args.token)}")
    except (PublishError, ValueError, OSError, HfHubHTTPError) as err:  # OSError: also offline mode
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def generate_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Continue prompts with the KV-cache sampler and print each completion."""
    from jaxmath.checkpoint import CheckpointError
    from jaxmath.data.formats import FORMATS, get_format, render_prompt

    parser = argparse.ArgumentParser(prog=prog, description=generate_main.__doc__)
    parser.add_argument("--model", required=True, help="HF checkpoint directory or jaxmath model directory")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    parser.add_argument("--prompts-file", default=None, help="a text file with one prompt per line")
    parser.add_argument("--format", default="boxed", choices=[*sorted(FORMATS), "raw"],
                        help="prompt format rendered through the chat template; raw = the text as given")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--min-p", type=float, default=0.0)
    parser.add_argument("--num-samples", type=int, default=1, help="completions per prompt")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                        help="compute dtype (default: bfloat16 on GPU/TPU, float32 on CPU)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    args = parser.parse_args(argv)
    import jax

    from jaxmath.inference.completions import sample_completions
    from jaxmath.inference.config import Sampling
    from jaxmath.inference.loading import load_for_generation

    try:
        prompts = list(args.prompt)
        if args.prompts_file:
            with open(args.prompts_file, encoding="utf-8") as handle:
                prompts += [line.rstrip("\n") for line in handle if line.strip()]
        if not prompts:
            parser.error("give at least one --prompt or a --prompts-file")
        model, tokenizer, eos_ids, mesh = load_for_generation(args.model, args.dtype, args.tokenizer)
        if args.format != "raw":
            prompts = [render_prompt(get_format(args.format), p, tokenizer) for p in prompts]
        sampling = Sampling(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.min_p, args.seed,
                            tuple(args.stop))
        start = time.perf_counter()
        with jax.set_mesh(mesh):
            results = sample_completions(model, tokenizer, prompts, args.num_samples, sampling, eos_ids,
                                         batch_size=len(prompts) * args.num_samples)
    except (CheckpointError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for i, samples in enumerate(results, start=1):
        for j, (text, tokens) in enumerate(samples, start=1):
            print(f"=== prompt {i}, sample {j} ({tokens} tokens) ===\n{text}")
    total = sum(tokens for samples in results for _, tokens in samples)
    print(f"generated {total} tokens in {time.perf_counter() - start:.1f}s (compilation included)")
    return 0


def data_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from jaxmath.commands.data import main as data

    return data(argv, prog)


def eval_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from jaxmath.evaluation import main as evaluate

    return evaluate(argv, prog)


def pipeline_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from jaxmath.pipeline import main as pipeline

    return pipeline(argv, prog)


def demo_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from jaxmath.demo import demo_main as demo

    return demo(argv, prog)


COMMANDS: dict[str, dict[str, Callable[..., int]]] = {
    "convert": {"hf-to-jax": hf_to_jax_main, "jax-to-hf": jax_to_hf_main},
    "data": {"": data_main},
    "generate": {"": generate_main},
    "train": {"": train_main},
    "demo": {"": demo_main},
    "pipeline": {"": pipeline_main},
    "eval": {"": eval_main},
    "push": {"": push_main},
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    group, rest = COMMANDS[argv[0]], argv[1:]
    if "" in group:
        return group[""](rest, prog=f"jaxmath {argv[0]}")
    if not rest or rest[0] not in group:
        print(f"usage: jaxmath {argv[0]} {{{','.join(group)}}} ...", file=sys.stderr)
        return 2
    return group[rest[0]](rest[1:], prog=f"jaxmath {argv[0]} {rest[0]}")


if __name__ == "__main__":
    sys.exit(main())
