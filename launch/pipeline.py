#!/usr/bin/env python
"""Run a multi-stage pipeline (teacher data -> SFT -> GRPO -> PRM -> DPO -> length-aware RL) from one config.

    python launch/pipeline.py --config configs/pipeline/tiny-cpu.yaml              # CPU, minutes
    python launch/pipeline.py --config configs/pipeline/math-1.5b.yaml [--from-stage dpo]

Each stage runs in <output_dir>/<stage>/ from the previous stage's final model; a rerun skips finished
stages and resumes an interrupted one from its last checkpoint.
"""
import sys

from jaxmath.pipeline import pipeline_main

if __name__ == "__main__":
    sys.exit(pipeline_main(prog="launch/pipeline.py"))
