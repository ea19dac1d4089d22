#!/usr/bin/env python
"""Benchmark HF <-> jaxmath conversion on a random bfloat16 checkpoint shaped like Qwen2.5-0.5B (~1 GB).

Prints, for a plain safetensors read, HF -> JAX and JAX -> HF: wall time and peak RSS (each phase runs in
its own process; the peak RSS of a process that only imports jaxmath is shown as the baseline).
Targets: peak RSS <= 1.5x the checkpoint size; each direction <= 2x the plain read time.

    python bench/convert.py [--workdir /tmp/jaxmath_bench_convert] [--layers 24]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

QWEN25_05B = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=151936, hidden_size=896,
                  intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                  hidden_act="silu", torch_dtype="bfloat16", bos_token_id=151643, eos_token_id=151643)


def make_checkpoint(path: Path, layers: int) -> int:
    """Write random bf16 weights with Qwen2.5-0.5B's names and shapes in ~3 shards; return the byte size."""
    import ml_dtypes
    import numpy as np

    from jaxmath.checkpoint.hf_io import write_safetensors_shards
    from jaxmath.checkpoint.mapping import rules_for
    from jaxmath.checkpoint.convert import expected_shapes
    from jaxmath.models.config import ModelConfig

    hf_config = {**QWEN25_05B, "num_hidden_layers": layers}
    config = ModelConfig.from_hf(hf_config)
    shapes = expected_shapes(config)
    rng = np.random.default_rng(0)

    def tensors():
        for rule in rules_for(config):
            shape = shapes[rule.jax_path][1:] if rule.stacked else shapes[rule.jax_path]
            for name in rule.hf_names(config):
                hf_shape = rule.layout.hf_shape(shape)
                yield name, (rng.standard_normal(hf_shape, dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16)

    path.mkdir(parents=True)
    total_bytes = config.num_params() * 2
    write_safetensors_shards(path, tensors(), max_shard_bytes=total_bytes // 3 + 1)
    (path / "config.json").write_text(json.dumps(hf_config, indent=2))
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def phase(name: str, src: str, dst: str) -> None:
    """Run one measured phase in this (fresh) process; print its wall time and the process's peak RSS."""
    import jaxmath  # noqa: F401  (import cost is part of the baseline, not the timing)
    from jaxmath.checkpoint.hf_io import HFCheckpointReader

    start = time.perf_counter()
    if name == "read":
        reader = HFCheckpointReader(src)
        assert sum(reader.read(n).nbytes for n in reader.names()) > 0
    elif name == "hf_to_jax":
        jaxmath.convert_hf_to_jax(src, dst)
    elif name == "jax_to_hf":
        jaxmath.export_to_hf(src, dst, max_shard_size="400MB")
    elif name != "baseline":
        raise ValueError(name)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_rss_mib()}))


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM; unlike ru_maxrss it is not inherited from the forking parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_phase(name: str, src: Path, dst: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, __file__, "--phase", name, str(src), str(dst)],
                          capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if done.returncode:
        raise SystemExit(f"phase {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/jaxmath_bench_convert")
    parser.add_argument("--layers", type=int, default=24, help="decoder layers (24 = the real 0.5B shape)")
    parser.add_argument("--phase", nargs=3, metavar=("NAME", "SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phase(*args.phase)
        return
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    hf, ckpt, out = work / "hf", work / "ckpt", work / "hf_out"
    size = make_checkpoint(hf, args.layers)
    print(f"checkpoint: {size / 2**20:.0f} MiB in {len(list(hf.glob('*.safetensors')))} files", flush=True)
    results = {}
    for name, src, dst in [("baseline", hf, work / "none"), ("read", hf, work / "none"),
                           ("hf_to_jax", hf, ckpt), ("jax_to_hf", ckpt, out)]:
        results[name] = run_phase(name, src, dst)
        print(f"  {name:<10} {results[name]['seconds']:7.2f} s   peak RSS {results[name]['peak_rss_mib']:7.0f} MiB",
              flush=True)
    size_mib = size / 2**20
    base = results["baseline"]["peak_rss_mib"]
    print("\n| phase | wall s | x plain read | peak RSS MiB | RSS above import baseline / ckpt size |")
    print("|---|---|---|---|---|")
    for name in ("read", "hf_to_jax", "jax_to_hf"):
        r = results[name]
        print(f"| {name} | {r['seconds']:.2f} | {r['seconds'] / results['read']['seconds']:.2f} | "
              f"{r['peak_rss_mib']:.0f} | {(r['peak_rss_mib'] - base) / size_mib:.2f} |")
    print(f"\ncheckpoint {size_mib:.0f} MiB; import baseline RSS {base:.0f} MiB; "
          f"peak RSS / ckpt size: hf_to_jax {results['hf_to_jax']['peak_rss_mib'] / size_mib:.2f}, "
          f"jax_to_hf {results['jax_to_hf']['peak_rss_mib'] / size_mib:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
