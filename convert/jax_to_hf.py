#!/usr/bin/env python
"""Export a jaxmath model directory to a Hugging Face checkpoint that `transformers` loads
(safetensors shards + index, config.json with every original key, generation config, tokenizer files).

    python convert/jax_to_hf.py --ckpt ckpt/ --out hf_out/ [--dtype bfloat16] [--max-shard-size 5GB]
"""
from __future__ import annotations

import argparse
import sys
import time

from jaxmath.checkpoint import CheckpointError, export_to_hf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="jaxmath model directory (from hf_to_jax.py or a trainer)")
    parser.add_argument("--out", required=True, help="output HF directory (written atomically)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="dtype of the exported tensors (default: the checkpoint's parameter dtype)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard, e.g. 5GB or 500MB")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = export_to_hf(args.ckpt, args.out, dtype=args.dtype, max_shard_size=args.max_shard_size,
                           overwrite=args.overwrite, progress=True)
    except (CheckpointError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
