#!/usr/bin/env python
"""Convert a Hugging Face checkpoint (Qwen2 / Qwen2.5 / Qwen3 / Llama / DeepSeek) into a jaxmath model directory.

    python convert/hf_to_jax.py --hf path/to/hf_dir --out ckpt/ [--dtype bfloat16]
"""
import sys

from jaxmath.commands.convert import hf_to_jax_main

if __name__ == "__main__":
    sys.exit(hf_to_jax_main())
