#!/usr/bin/env python
"""Convert a Hugging Face checkpoint directory (Qwen2 / Qwen2.5 / Qwen3 / Llama / DeepSeek) into a jaxmath
model directory (Orbax), streaming tensor by tensor.

    python convert/hf_to_jax.py --hf path/to/hf_dir --out ckpt/ [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import sys
import time

from jaxmath.checkpoint import CheckpointError, convert_hf_to_jax
from jaxmath.models import UnsupportedConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf", required=True, help="HF checkpoint directory (config.json + *.safetensors)")
    parser.add_argument("--out", required=True, help="output jaxmath model directory (written atomically)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="parameter dtype to store (default: the checkpoint's own)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = convert_hf_to_jax(args.hf, args.out, dtype=args.dtype, overwrite=args.overwrite, progress=True)
    except (CheckpointError, UnsupportedConfigError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
