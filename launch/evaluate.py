#!/usr/bin/env python
"""Evaluate a model on math benchmarks (pass@1, maj@k, unbiased pass@k, PRM best-of-N); see `--help`.

    python launch/evaluate.py --model ckpt_or_hf_dir --benchmarks gsm8k math500 \
        --data-dir ../shared/data --format boxed --num-samples 8 --temperature 0.7 --out results/
    python launch/evaluate.py --model ckpt --benchmarks math500 --num-samples 8 --select prm --prm prm_ckpt ...
"""
import sys

from jaxmath.commands.evaluate import eval_main

if __name__ == "__main__":
    sys.exit(eval_main(prog="launch/evaluate.py"))
