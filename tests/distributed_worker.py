"""Helper for test_distributed.py: 3 SFT train steps of a tiny model on fixed global batches.

Run as a script it is one process of a multi-process JAX job (started through
jaxmath.parallel.initialize_distributed from JAXMATH_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID) and
prints {"process": i, "losses": [...]} as its last stdout line. The test imports `train_losses` to get the
single-process reference. Each process feeds only the rows its devices hold.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

MESH = (2, 4, 1)  # batch split over data x fsdp, weights sharded over fsdp: both cross the process boundary
STEPS = 3
TINY_MODEL = dict(model_type="qwen2", vocab_size=128, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
                  hidden_act="silu", tie_word_embeddings=False)


def global_batch(seed: int, rows: int = 8, length: int = 32) -> dict[str, np.ndarray]:
    """Two packed segments per row, trailing padding, loss on each segment's later tokens."""
    rng = np.random.default_rng(seed)
    half = length // 2
    segments = np.where(np.arange(length) < half, 1, 2)[None].repeat(rows, 0).astype(np.int32)
    segments[:, -3:] = 0
    positions = np.tile(np.concatenate([np.arange(half), np.arange(half)]), (rows, 1)).astype(np.int32)
    return {"input_ids": rng.integers(1, 128, (rows, length)).astype(np.int32), "segment_ids": segments,
            "positions": positions, "loss_mask": ((positions >= 4) & (segments > 0)).astype(np.int32)}


def local_rows(batch: dict[str, np.ndarray], sharding) -> dict[str, np.ndarray]:
    """The contiguous block of global rows that this process's devices hold under `sharding`."""
    shape = batch["input_ids"].shape
    blocks = {(i[0].start or 0, shape[0] if i[0].stop is None else i[0].stop)
              for i in sharding.addressable_devices_indices_map(shape).values()}
    lo, hi = min(b[0] for b in blocks), max(b[1] for b in blocks)
    if sum(b[1] - b[0] for b in blocks) != hi - lo:
        raise ValueError(f"this process's rows {sorted(blocks)} are not one contiguous block")
    return {k: v[lo:hi] for k, v in batch.items()}


def train_losses() -> list[float]:
    """Losses of STEPS AdamW steps on the MESH over every device of every process."""
    import jax
    from flax import nnx

    from jaxmath.models import ModelConfig, build_model
    from jaxmath.objectives.sft import sft_loss
    from jaxmath.parallel import make_mesh
    from jaxmath.train.optimizer import OptimizerConfig, make_optimizer
    from jaxmath.train.state import init_train_state, param_shardings, state_shardings
    from jaxmath.train.step import batch_shardings, make_train_step
    from jaxmath.train.trainer import to_global

    config = ModelConfig.from_hf(TINY_MODEL)
    mesh = make_mesh(MESH)
    abstract = nnx.eval_shape(lambda: build_model(config))
    graphdef, abstract_state = nnx.split(abstract)
    p_shard = param_shardings(abstract, mesh)
    optimizer, _ = make_optimizer(OptimizerConfig(lr=1e-3, warmup_steps=0, clip_norm=1.0, weight_decay=0.01), 10)
    shardings = state_shardings(p_shard, optimizer, nnx.to_pure_dict(abstract_state), mesh)
    # Every process computes only its own shards of the same seeded initialisation.
    params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(build_model(config, 0))), out_shardings=p_shard)()
    state = init_train_state(params, optimizer, 0, shardings)
    example = global_batch(0)
    step = make_train_step(sft_loss, optimizer, mesh, graphdef, shardings, example)
    rows = batch_shardings(mesh, example)
    losses = []
    for seed in range(STEPS):
        batch = global_batch(seed)
        state, metrics = step(state, to_global(local_rows(batch, rows["input_ids"]), rows))
        losses.append(float(metrics["loss"]))  # replicated, so every process can read it
    return losses


def grpo_losses(output_dir: str) -> list[float]:
    """Update losses of 2 GRPO iterations (rollouts sharded over both processes) of the tiny loop test config."""
    from test_grpo_loop import tiny

    from jaxmath.train.rl import train_grpo

    config = tiny(mesh={"data": 2, "fsdp": 4, "tensor": 1}, train={"steps": 2, "save_every": 0},
                  grpo={"ref_refresh_every": 0})
    train_grpo(config, output_dir, progress=False)
    import jax
    from jax.experimental import multihost_utils
    # Only process 0 writes metrics.jsonl; every process gets its losses through a broadcast.
    rows = []
    if jax.process_index() == 0:
        rows = [json.loads(line)["loss"] for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
    return [float(x) for x in multihost_utils.broadcast_one_to_all(np.asarray(rows or [0.0, 0.0]))]


def main() -> int:
    from jaxmath.parallel import initialize_distributed

    if not initialize_distributed():
        print("distributed_worker: JAXMATH_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID are not set", file=sys.stderr)
        return 2
    import jax

    losses = grpo_losses(sys.argv[2]) if sys.argv[1:2] == ["grpo"] else train_losses()
    print(json.dumps({"process": jax.process_index(), "devices": jax.device_count(), "losses": losses}), flush=True)
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
