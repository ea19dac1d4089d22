"""`jaxmath generate`: continue prompts with the KV-cache sampler and print each completion."""
from __future__ import annotations

import argparse
import sys
import time

from jaxmath.commands.options import (DTYPE_CHOICES, add_compile_cache_argument, add_quiet_argument,
                                      add_sampling_arguments, sampling_from_args)
from jaxmath.inference.config import Sampling
from jaxmath.progress import configure_logging


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
    add_sampling_arguments(parser, Sampling(max_new_tokens=256))
    parser.add_argument("--num-samples", type=int, default=1, help="completions per prompt")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                        help="compute dtype (default: bfloat16 on GPU/TPU, float32 on CPU)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    add_quiet_argument(parser)
    add_compile_cache_argument(parser)
    args = parser.parse_args(argv)
    configure_logging(args.quiet)
    import jax

    from jaxmath.compilation import enable_compile_cache
    from jaxmath.inference.completions import sample_completions
    from jaxmath.inference.loading import load_for_generation

    try:
        prompts = list(args.prompt)
        if args.prompts_file:
            with open(args.prompts_file, encoding="utf-8") as handle:
                prompts += [line.rstrip("\n") for line in handle if line.strip()]
        if not prompts:
            parser.error("give at least one --prompt or a --prompts-file")
        enable_compile_cache(args.compile_cache, source="--compile-cache")
        model, tokenizer, eos_ids, mesh = load_for_generation(args.model, args.dtype, args.tokenizer)
        if args.format != "raw":
            prompts = [render_prompt(get_format(args.format), p, tokenizer) for p in prompts]
        sampling = sampling_from_args(args)
        start = time.perf_counter()
        with jax.set_mesh(mesh):
            results = sample_completions(model, tokenizer, prompts, args.num_samples, sampling, eos_ids,
                                         batch_size=len(prompts) * args.num_samples, quiet=args.quiet)
    except (CheckpointError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for i, samples in enumerate(results, start=1):
        for j, (text, tokens) in enumerate(samples, start=1):
            print(f"=== prompt {i}, sample {j} ({tokens} tokens) ===\n{text}")
    total = sum(tokens for samples in results for _, tokens in samples)
    print(f"generated {total} tokens in {time.perf_counter() - start:.1f}s (compilation included)")
    return 0
