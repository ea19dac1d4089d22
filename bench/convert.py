#!/usr/bin/env python
"""Benchmark HF <-> jaxmath conversion on a random bfloat16 checkpoint shaped like Qwen2.5-0.5B (~1 GB).

Each phase runs in a fresh process (so its peak RSS is its own), `--repeats` times interleaved; the table
shows the fastest run's wall time and the highest peak RSS. The files are in the page cache for every
phase (the checkpoint is read once before timing). The plain read puts every tensor of every file into
host memory and keeps them all, once with safetensors and once with one readinto per tensor; the faster
of the two is the reference ("x plain read"). The plain copy reads every tensor and writes its bytes to a
new file: the least any conversion must do. Dirty pages are synced before each phase; outputs are deleted
only at the end.
Targets (issue #2): each direction <= 2x the plain read's time; peak RSS <= 1.5x the checkpoint size
(the whole process's peak, including the ~230 MiB that importing jax and Orbax costs).

    python bench/convert.py [--workdir /tmp/jaxmath_bench_convert] [--layers 24] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

QWEN25_05B = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=151936, hidden_size=896,
                  intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                  hidden_act="silu", torch_dtype="bfloat16", bos_token_id=151643, eos_token_id=151643)
TIME_TARGET, RSS_TARGET = 2.0, 1.5
PHASES = {"read": "plain read: safetensors", "raw_read": "plain read: readinto",
          "copy": "plain copy (read + write)", "hf_to_jax": "HF -> JAX", "jax_to_hf": "JAX -> HF"}


def make_checkpoint(path: Path, layers: int) -> int:
    """Write random bf16 weights with Qwen2.5-0.5B's names and shapes in 3 shards; return the byte size."""
    import ml_dtypes
    import numpy as np

    from jaxmath.checkpoint.convert import hf_tensor_specs
    from jaxmath.checkpoint.hf_io import write_safetensors_shards
    from jaxmath.models.config import ModelConfig

    hf_config = {**QWEN25_05B, "num_hidden_layers": layers}
    specs = hf_tensor_specs(ModelConfig.from_hf(hf_config), "bfloat16")
    rng = np.random.default_rng(0)
    tensors = ((s.name, (rng.standard_normal(s.shape, dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16))
               for s in specs)
    path.mkdir(parents=True)
    write_safetensors_shards(path, specs, tensors, max_shard_bytes=sum(s.nbytes for s in specs) * 2 // 5)
    (path / "config.json").write_text(json.dumps(hf_config, indent=2))
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def read_safetensors(src: Path) -> int:
    """Every tensor into host memory with safetensors, all kept until the end (as a conversion holds them)."""
    from safetensors import safe_open

    tensors = []
    for file in sorted(src.glob("*.safetensors")):
        with safe_open(file, framework="np") as handle:
            tensors += [handle.get_tensor(name) for name in handle.keys()]
    return sum(t.nbytes for t in tensors)


def read_raw(src: Path) -> int:
    """Every tensor's bytes into a new buffer with one readinto each, all kept (no parsing beyond offsets).

    Buffers are plain anonymous mappings: numpy's arrays ask for transparent huge pages, which fault in
    2-3x slower on this VM.
    """
    buffers = []
    for file in sorted(src.glob("*.safetensors")):
        with open(file, "rb", buffering=0) as raw:
            length = int.from_bytes(raw.read(8), "little")
            header = json.loads(raw.read(length))
            header.pop("__metadata__", None)
            for entry in header.values():
                begin, end = entry["data_offsets"]
                buffers.append(mmap.mmap(-1, max(end - begin, 1)))
                raw.seek(8 + length + begin)
                raw.readinto(memoryview(buffers[-1])[: end - begin])
    return sum(len(b) for b in buffers)


def copy_raw(src: Path, dst: Path) -> int:
    """Every tensor's bytes read (readinto one reused buffer) and written to a new file each: the least any
    conversion must do, since it reads the whole checkpoint and writes a new one."""
    dst.mkdir()
    buffer, total = mmap.mmap(-1, max(f.stat().st_size for f in src.glob("*.safetensors"))), 0
    for file in sorted(src.glob("*.safetensors")):
        with open(file, "rb", buffering=0) as raw:
            length = int.from_bytes(raw.read(8), "little")
            header = json.loads(raw.read(length))
            header.pop("__metadata__", None)
            for k, entry in enumerate(header.values()):
                begin, end = entry["data_offsets"]
                raw.seek(8 + length + begin)
                raw.readinto(memoryview(buffer)[: end - begin])
                with open(dst / f"{file.stem}-{k}", "wb") as out:
                    total += out.write(memoryview(buffer)[: end - begin])
    return total


def phase(name: str, src: str, dst: str) -> None:
    """Run one measured phase in this (fresh) process; print its wall time and the process's peak RSS."""
    import jaxmath  # noqa: F401  (import cost is part of the baseline, not the timing)
    import jaxmath.checkpoint  # noqa: F401

    start = time.perf_counter()
    if name == "read":
        assert read_safetensors(Path(src)) > 0
    elif name == "raw_read":
        assert read_raw(Path(src)) > 0
    elif name == "copy":
        assert copy_raw(Path(src), Path(dst)) > 0
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
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def run_phase(name: str, src: Path, dst: Path) -> dict[str, float]:
    os.sync()  # no dirty pages of earlier phases are written back during this one
    done = subprocess.run([sys.executable, __file__, "--phase", name, str(src), str(dst)],
                          capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if done.returncode:
        raise SystemExit(f"phase {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def same_tensors(a: Path, b: Path) -> bool:
    """Whether two HF directories hold bit-identical tensors under the same names."""
    from safetensors.numpy import load_file

    def tensors(path: Path) -> dict:
        out = {}
        for file in sorted(path.glob("*.safetensors")):
            out.update(load_file(file))
        return out

    left, right = tensors(a), tensors(b)
    return left.keys() == right.keys() and all(
        left[k].dtype == right[k].dtype and left[k].tobytes() == right[k].tobytes() for k in left)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/jaxmath_bench_convert")
    parser.add_argument("--layers", type=int, default=24, help="decoder layers (24 = the real 0.5B shape)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each phase (fastest time is shown)")
    parser.add_argument("--phase", nargs=3, metavar=("NAME", "SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phase(*args.phase)
        return
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    hf = work / "hf"
    size = make_checkpoint(hf, args.layers)
    size_mib = size / 2**20
    print(f"checkpoint: {size_mib:.0f} MiB bfloat16 in {len(list(hf.glob('*.safetensors')))} files; "
          f"{args.repeats} runs per phase", flush=True)
    base = run_phase("baseline", hf, work / "none")["peak_rss_mib"]
    run_phase("read", hf, work / "none")  # warm the page cache; not counted
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in PHASES}
    for k in range(args.repeats):  # outputs are deleted only at the end (deleting costs, here: ext4 discard)
        ckpt, out = work / f"ckpt{k}", work / f"hf_out{k}"
        for name, src, dst in [("read", hf, work / "none"), ("raw_read", hf, work / "none"),
                               ("copy", hf, work / f"copy{k}"), ("hf_to_jax", hf, ckpt), ("jax_to_hf", ckpt, out)]:
            runs[name].append(run_phase(name, src, dst))
            print(f"  run {k + 1}: {PHASES[name]:<26} {runs[name][-1]['seconds']:6.2f} s   "
                  f"peak RSS {runs[name][-1]['peak_rss_mib']:6.0f} MiB", flush=True)
    identical = same_tensors(hf, work / "hf_out0")
    read = min(r["seconds"] for name in ("read", "raw_read") for r in runs[name])
    print("\n| phase | seconds | x plain read | peak RSS MiB | x checkpoint size | target met |")
    print("|---|---|---|---|---|---|")
    for name, label in PHASES.items():
        seconds = min(r["seconds"] for r in runs[name])
        rss = max(r["peak_rss_mib"] for r in runs[name])
        met = "-"
        if name in ("hf_to_jax", "jax_to_hf"):
            met = "yes" if seconds <= TIME_TARGET * read and rss <= RSS_TARGET * size_mib else "no"
        print(f"| {label} | {seconds:.2f} | {seconds / read:.2f} | {rss:.0f} | {rss / size_mib:.2f} | {met} |")
    print(f"\ncheckpoint {size_mib:.0f} MiB; targets: <= {TIME_TARGET:g}x plain read, peak RSS <= "
          f"{RSS_TARGET:g}x checkpoint ({RSS_TARGET * size_mib:.0f} MiB); importing jaxmath alone peaks at "
          f"{base:.0f} MiB; round trip bit-identical: {'yes' if identical else 'NO'}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
