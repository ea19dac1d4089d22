"""The training config: YAML sections model / mesh / optimizer / data / train, plus the objective's own
section (dpo / prm; see configs/)."""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

from jaxmath.objectives.dpo import DPOConfig
from jaxmath.parallel import MeshConfig
from jaxmath.train.optimizer import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class LoraSection:
    """LoRA adapters on the target projections; the base weights stay frozen. Exports merge them."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = dataclasses.field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """Where the weights come from: a HF or jaxmath directory (`path`), or a HF-style config dict to
    initialise randomly (`init`, e.g. tiny CPU runs; vocab_size defaults to the tokenizer's size)."""

    path: str | None = None
    init: dict[str, Any] | None = None
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"  # master weights (float32 + bfloat16 compute = mixed precision)
    remat: str = "none"
    attention_impl: str | None = None
    seed: int = 0
    lora: LoraSection | None = None

    def options(self) -> dict[str, Any]:
        """ModelConfig fields set by this section (runtime choices and LoRA)."""
        options: dict[str, Any] = dict(dtype=self.dtype, param_dtype=self.param_dtype, remat=self.remat,
                                       attention_impl=self.attention_impl)
        if self.lora is not None:
            options.update(lora_rank=self.lora.rank, lora_alpha=self.lora.alpha, lora_dropout=self.lora.dropout,
                           lora_targets=tuple(self.lora.targets))
        return options

    def __post_init__(self) -> None:
        if (self.path is None) == (self.init is None):
            raise ValueError("set exactly one of model.path (pretrained weights) and model.init (random init)")


@dataclasses.dataclass(frozen=True)
class DataSection:
    """Records from files and/or synthetic generators, rendered in a prompt format, tokenised and packed."""

    train: list[str] = dataclasses.field(default_factory=list)  # JSONL / Parquet files in the record schema
    eval: list[str] = dataclasses.field(default_factory=list)
    synthetic: dict[str, int] = dataclasses.field(default_factory=dict)  # generator name -> count
    eval_fraction: float = 0.0  # held out from the training records when no eval files are given
    format: str = "boxed"
    tokenizer: str | None = None  # a tokenizer directory; None = model.path; "train" = fit a BPE on the data
    tokenizer_vocab_size: int = 512
    seq_len: int = 1024
    batch_size: int = 8  # global rows per optimizer step (all micro-batches, all processes)
    packing: Literal["first_fit", "best_fit"] | None = "first_fit"
    seed: int = 0
    strict: bool = False


@dataclasses.dataclass(frozen=True)
class TrainSection:
    steps: int = 100
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end
    eval_batches: int = 4
    eval_generate: int = 0  # held-out problems answered greedily and graded at each eval (0 = loss only)
    eval_max_new_tokens: int = 256
    save_every: int = 0  # 0 = only at the end
    keep_checkpoints: int = 3
    max_bad_steps: int = 5  # stop after this many consecutive non-finite steps
    seed: int = 0
    export_hf: bool = True  # write final_model/ (jaxmath) and hf/ (transformers) at the end

    def __post_init__(self) -> None:
        if self.steps < 1 or self.log_every < 1:
            raise ValueError(f"train.steps and train.log_every must be >= 1, got {self.steps}, {self.log_every}")
        if self.eval_every % self.log_every:
            raise ValueError(f"train.eval_every={self.eval_every} must be a multiple of "
                             f"train.log_every={self.log_every} (eval results are logged with the step's row)")


@dataclasses.dataclass(frozen=True)
class DPOSection(DPOConfig):
    """DPO: the loss settings (`jaxmath.objectives.DPOConfig`: beta, loss_type sigmoid / ipo / robust,
    label_smoothing, length_normalize) and where the reference log-probs come from: `precompute` = one pass
    of the frozen reference over the pairs before training, saved with the run (the reference model is not
    kept); `on_the_fly` = a frozen copy of the reference evaluated inside every step. The reference is the
    initial policy, or the model at `reference_model` (a HF / jaxmath directory or Hub id)."""

    reference: Literal["precompute", "on_the_fly"] = "precompute"
    reference_model: str | None = None

    def loss_options(self) -> dict[str, Any]:
        """The `make_loss("dpo", ...)` options (DPOConfig's fields)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(DPOConfig)}


@dataclasses.dataclass(frozen=True)
class PRMSection:
    """PRM: a 2-label token classifier (a causal-LM checkpoint gets a fresh head) trained on step labels read
    at each step's last token; traces with more than `max_steps` steps are skipped."""

    max_steps: int = 32

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    objective: Literal["sft", "dpo", "prm"] = "sft"
    output_dir: str = "runs/default"
    model: ModelSection = dataclasses.field(default_factory=lambda: ModelSection(init={}))
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    dpo: DPOSection | None = None  # objective dpo (defaults when absent)
    prm: PRMSection | None = None  # objective prm (defaults when absent)

    def __post_init__(self) -> None:
        for name, section in (("dpo", DPOSection), ("prm", PRMSection)):
            if getattr(self, name) is not None and self.objective != name:
                raise ValueError(f"a {name} section is set but objective is {self.objective!r}")
            if self.objective == name and getattr(self, name) is None:
                object.__setattr__(self, name, section())
        if self.train.eval_generate and self.objective in ("dpo", "prm"):
            raise ValueError(f"train.eval_generate (graded generation) needs records with answers, which objective "
                             f"{self.objective} does not read")
        if self.data.batch_size % self.optimizer.grad_accum:
            raise ValueError(f"data.batch_size={self.data.batch_size} is not a multiple of "
                             f"optimizer.grad_accum={self.optimizer.grad_accum}")
