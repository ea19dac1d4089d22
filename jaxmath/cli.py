"""The `jaxmath` command: the registry of jaxmath.commands, plus `pipeline` (whose command stages run commands
from that registry) and `demo`.
Each subcommand is also reachable through a thin script (convert/*.py, launch/*.py).

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
    jaxmath solve --model ckpt_or_hf_dir "What is the integral of x^2 from 0 to 3?" [--strategy beam --prm PRM_DIR]
                  [--json] [--input questions.jsonl --output answers.jsonl]
    jaxmath generate --model ckpt_or_hf_dir --prompt "What is 17 * 23?" [--max-new-tokens 256]
    jaxmath push --model run/hf --repo user/name [--private] [--dry-run]   upload to the Hugging Face Hub
"""
from __future__ import annotations

import sys

from jaxmath.commands import COMMANDS as WORK_COMMANDS
from jaxmath.commands import Command, run_command
from jaxmath.demo import demo_main
from jaxmath.pipeline import pipeline_main

COMMANDS: dict[str, dict[str, Command]] = {**WORK_COMMANDS, "demo": {"": demo_main},
                                           "pipeline": {"": pipeline_main}}


def main(argv: list[str] | None = None) -> int:
    """Run `jaxmath <command> ...`; returns the exit status."""
    return run_command(sys.argv[1:] if argv is None else argv, COMMANDS, __doc__.strip())


if __name__ == "__main__":
    sys.exit(main())
