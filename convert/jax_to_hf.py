#!/usr/bin/env python
"""Export a jaxmath model directory to a Hugging Face checkpoint that `transformers` loads.

    python convert/jax_to_hf.py --ckpt ckpt/ --out hf_out/ [--dtype bfloat16] [--max-shard-size 5GB]
"""
import sys

from jaxmath.commands.convert import jax_to_hf_main

if __name__ == "__main__":
    sys.exit(jax_to_hf_main())
