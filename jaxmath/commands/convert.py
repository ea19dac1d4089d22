"""`jaxmath convert hf-to-jax` and `jaxmath convert jax-to-hf` (also convert/hf_to_jax.py and convert/jax_to_hf.py)."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

from jaxmath.commands.options import DTYPE_CHOICES, add_quiet_argument
from jaxmath.progress import configure_logging


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
    add_quiet_argument(parser)
    args = parser.parse_args(argv)
    configure_logging(args.quiet)
    return _timed(lambda: convert_hf_to_jax(args.hf, args.out, dtype=args.dtype, overwrite=args.overwrite,
                                            progress=not args.quiet),
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
    add_quiet_argument(parser)
    args = parser.parse_args(argv)
    configure_logging(args.quiet)
    return _timed(lambda: export_to_hf(args.ckpt, args.out, dtype=args.dtype, max_shard_size=args.max_shard_size,
                                       overwrite=args.overwrite, progress=not args.quiet),
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
