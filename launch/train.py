#!/usr/bin/env python
"""Train with a YAML config: SFT, DPO, PRM and GRPO share the one loop and step factory (`objective:`).

    python launch/train.py --config configs/sft/tiny-cpu.yaml
    python launch/train.py --config configs/sft/qwen2.5-math-1.5b.yaml --set optimizer.lr=1e-5
    python launch/train.py --config configs/sft/qwen2.5-math-1.5b.yaml --resume
    python launch/train.py --config configs/sft/deepseek-math-7b-lora.yaml --dry-run   # memory per device
    python launch/train.py --config configs/dpo/tiny-cpu.yaml                          # preference pairs
    python launch/train.py --config configs/prm/tiny-cpu.yaml                          # process reward model
    python launch/train.py --config configs/sft/tiny-cpu.yaml --wandb-project NAME     # also log to W&B

Multi-host: the same command on every host; jax.distributed starts from the SLURM / TPU environment
(see launch/slurm_gpu.sbatch and launch/tpu_pod.sh) or JAXMATH_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID.
"""
import sys

from jaxmath.commands.train import train_main

if __name__ == "__main__":
    sys.exit(train_main())
