"""Helper for test_distributed.py: one process of a multi-process JAX job (started through
jaxmath.parallel.initialize_distributed from JAXMATH_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID) that prints
a JSON object as its last stdout line. The test imports the same functions and configs for its
single-process references.

    distributed_worker.py                          3 SFT train steps on fixed global batches ("losses")
    distributed_worker.py sft OUT TRAIN EVAL       the SFT trainer: training, evaluation, HF export ("summary")
    distributed_worker.py grpo OUT TRAIN           2 GRPO iterations ("rows": metrics.jsonl, "local_rewards")
"""
from __future__ import annotations

import faulthandler
import json
import signal
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
    from jaxmath.train.step import to_global

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


def sft_config(train_file: str, eval_file: str):
    """The tiny SFT run: 2 steps on `train_file`, then the loss over every row of `eval_file` (whose rows do not
    split evenly over the processes), graded generation on 2 of them, and the export to final_model/ and hf/.
    Batches split over both processes (data x fsdp = 2 x 4 devices)."""
    from jaxmath.config import from_dict
    from jaxmath.train.config import TrainConfig

    model = {k: v for k, v in TINY_MODEL.items() if k != "vocab_size"}  # the fitted tokenizer's size
    return from_dict(TrainConfig, {
        "objective": "sft", "model": {"init": model}, "mesh": {"data": 2, "fsdp": 4, "tensor": 1},
        "optimizer": {"lr": 1e-3, "schedule": "constant"},
        "data": {"train": [train_file], "eval": [eval_file], "format": "boxed", "tokenizer": "train",
                 "tokenizer_vocab_size": 300, "seq_len": 128, "batch_size": 8, "packing": None},
        "train": {"steps": 2, "log_every": 1, "eval_batches": 16, "eval_generate": 2, "eval_max_new_tokens": 6,
                  "save_every": 0, "export_hf": True},
    })


def grpo_config(train_file: str):
    """The tiny GRPO loop test config for 2 iterations over `train_file`'s prompts, rollouts split over both
    processes (weights sharded over fsdp=4 across the process boundary). One minibatch per pass: each process
    shuffles its own rows into minibatches, so with several the processes' minibatches would hold other rows
    than one process's."""
    from test_grpo_loop import tiny

    return tiny(mesh={"data": 2, "fsdp": 4, "tensor": 1}, train={"steps": 2, "save_every": 0},
                data={"synthetic": {}, "train": [train_file], "eval_fraction": 0.0},
                grpo={"ref_refresh_every": 0, "minibatches": 1})


def grpo_run(output_dir: str, train_file: str) -> dict:
    """2 GRPO iterations; returns metrics.jsonl's rows (every process reads them after a barrier) and the
    rewards of this process's own rollout rows, per iteration."""
    import jax
    from jax.experimental import multihost_utils

    import jaxmath.train.rl as rl
    from jaxmath.train.trainer import train

    local_rewards = []
    score = rl.score

    def recording_score(*args):
        scored = score(*args)
        local_rewards.append([float(x) for x in scored["rewards"]])
        return scored

    rl.score = recording_score
    train(grpo_config(train_file), output_dir, progress=False)
    multihost_utils.sync_global_devices("metrics written")
    rows = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
    return {"rows": rows, "local_rewards": local_rewards, "process": jax.process_index()}


def main() -> int:
    faulthandler.register(signal.SIGUSR1)  # a test that times out sees where each process waits
    from jaxmath.parallel import initialize_distributed

    if not initialize_distributed():
        print("distributed_worker: JAXMATH_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID are not set", file=sys.stderr)
        return 2
    import jax

    mode, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("steps", [])
    result = {"process": jax.process_index(), "devices": jax.device_count()}
    if mode == "grpo":
        result.update(grpo_run(*args))
    elif mode == "sft":
        from jaxmath.train.trainer import train

        result["summary"] = train(sft_config(*args[1:]), args[0], progress=False)
    else:
        result["losses"] = train_losses()
    print(json.dumps(result), flush=True)
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
