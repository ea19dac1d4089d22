"""The training config: YAML sections model / mesh / optimizer / data / train, plus the objective's own
section (dpo / prm; see configs/)."""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
from typing import Any, ClassVar, Literal

from jaxmath.config import section
from jaxmath.inference.config import Sampling
from jaxmath.models.config import REMAT_POLICIES
from jaxmath.models.quantize import check_settings as check_quantize_settings
from jaxmath.objectives.grpo import ADVANTAGE_ESTIMATORS, GRPOConfig
from jaxmath.objectives.dpo import DPOConfig
from jaxmath.parallel import MeshConfig
from jaxmath.tracking import LoggingSection
from jaxmath.train.optimizer import OptimizerConfig
from jaxmath.verify.sandbox import SandboxConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoraSection:
    """LoRA adapters on the target projections; the base weights stay frozen. Exports merge them."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = dataclasses.field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclasses.dataclass(frozen=True)
class QuantizeSection:
    """The frozen base's projection kernels kept blockwise-quantised while LoRA adapters train (QLoRA):
    `weights` nf4 (4-bit NormalFloat) or int8, one float32 absmax scale per `block_size` consecutive input
    weights (jaxmath.models.quantize). Norms, embeddings and the LM head stay in model.param_dtype."""

    weights: str = "nf4"
    block_size: int = 64

    def __post_init__(self) -> None:
        check_quantize_settings(self.weights, self.block_size, {})
        if importlib.util.find_spec("qwix") is None:
            raise ValueError("model.quantize needs the qwix package: pip install 'jaxmath[quant]'")


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """Where the weights come from: a HF or jaxmath directory (`path`), or a HF-style config dict to
    initialise randomly (`init`, e.g. tiny CPU runs; vocab_size defaults to the tokenizer's size)."""

    path: str | None = None
    init: dict[str, Any] | None = None
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"  # master weights (float32 + bfloat16 compute = mixed precision)
    remat: str = "auto"  # or none / dots / dots_no_batch / full (jaxmath.train.remat)
    attention_impl: str | None = "auto"  # or xla / chunked / cudnn / splash; null = auto (jaxmath.models.attention)
    seed: int = 0
    lora: LoraSection | None = None
    # a PEFT LoRA adapter directory (or Hub id) loaded onto model.path; its settings replace model.lora
    adapter: str | None = None
    quantize: QuantizeSection | None = None  # e.g. {weights: nf4, block_size: 64}: a 4-bit frozen base for LoRA

    def options(self) -> dict[str, Any]:
        """ModelConfig fields set by this section (runtime choices and LoRA). remat: auto is left out: the trainer
        measures it (jaxmath.train.remat) before building the model it trains; other uses do not differentiate."""
        options: dict[str, Any] = dict(dtype=self.dtype, param_dtype=self.param_dtype,
                                       attention_impl=self.attention_impl)
        if self.remat != "auto":
            options["remat"] = self.remat
        if self.lora is not None:
            options.update(lora_rank=self.lora.rank, lora_alpha=self.lora.alpha, lora_dropout=self.lora.dropout,
                           lora_targets=tuple(self.lora.targets))
        return options

    def __post_init__(self) -> None:
        if (self.path is None) == (self.init is None):
            raise ValueError("set exactly one of model.path (pretrained weights) and model.init (random init)")
        if self.adapter is not None and (self.path is None or self.lora is not None):
            raise ValueError("model.adapter loads a PEFT adapter onto model.path and brings its own LoRA settings: "
                             "set model.path, and remove model.lora")
        if self.remat not in ("auto", *REMAT_POLICIES):
            raise ValueError(f"model.remat={self.remat!r}; expected auto or one of {REMAT_POLICIES}")
        if self.quantize is not None and self.lora is None and self.adapter is None:
            raise ValueError("model.quantize keeps the base frozen in 4 or 8 bits, so only LoRA adapters can train: "
                             "set model.lora (or model.adapter)")

    def quantize_options(self) -> dict[str, Any]:
        """ModelConfig fields set by model.quantize (applied after loading: see jaxmath.train.run.load_params)."""
        if self.quantize is None:
            return {}
        return dict(quantize_weights=self.quantize.weights, quantize_block_size=self.quantize.block_size)


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
    push_to_hub: str | None = None  # "user/name": upload hf/ with a generated model card after the export
    hub_private: bool = False  # create that repository private
    # XLA's persistent compilation cache: auto ($JAXMATH_COMPILE_CACHE, else ~/.cache/jaxmath/xla), a directory,
    # or off (jaxmath.compilation)
    compile_cache: str | bool = "auto"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.log_every < 1:
            raise ValueError(f"train.steps and train.log_every must be >= 1, got {self.steps}, {self.log_every}")
        if self.push_to_hub is not None:
            from jaxmath.train.publish import check_repo_id
            if not self.export_hf:
                raise ValueError("train.push_to_hub uploads the final HF export: it needs train.export_hf: true")
            check_repo_id(self.push_to_hub, "train.push_to_hub")
        if self.eval_every % self.log_every:
            raise ValueError(f"train.eval_every={self.eval_every} must be a multiple of "
                             f"train.log_every={self.log_every} (eval results are logged with the step's row)")


@dataclasses.dataclass(frozen=True)
class GRPOLossSection(GRPOConfig):
    """grpo.loss: the GRPO loss settings (`jaxmath.objectives.GRPOConfig`). Dr. GRPO's `constant` aggregation
    divides by the generation budget, so `max_completion_length` may be left out: the grpo section sets it to
    grpo.sampling.max_new_tokens (and refuses any other value)."""

    def __post_init__(self) -> None:
        if self.aggregation == "constant" and self.max_completion_length is None:
            dataclasses.replace(self, max_completion_length=1)  # GRPOConfig's other checks (a placeholder length)
        else:
            super().__post_init__()


@dataclasses.dataclass(frozen=True)
class GRPOSection:
    """GRPO rollouts and updates: `group_size` completions for each of `prompts_per_step` prompts, rewarded by
    the named reward functions, turned into group advantages and used for `mu` passes over `minibatches`
    minibatches (one optimizer update each). `train.steps` counts these rollout-and-update iterations.
    Rollouts decode with `sampling` (its seed offsets the rollout seeds, which come from train.seed and the
    iteration)."""

    MOVED_KEYS: ClassVar[dict[str, str]] = {key: f"sampling.{key}" for key in
                                            ("max_new_tokens", "temperature", "top_p", "top_k", "stop_strings")}

    group_size: int = 8
    prompts_per_step: int = 8
    max_prompt_len: int = 256
    sampling: Sampling = section(Sampling(max_new_tokens=256, temperature=1.0))
    # reward name -> weight (see jaxmath.rewards.REWARDS), and optional keyword parameters per reward
    rewards: dict[str, float] = dataclasses.field(default_factory=lambda: {"correctness": 1.0})
    reward_params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    advantage: str = "grpo"  # grpo | grpo_no_std (Dr. GRPO) | rloo
    loss: GRPOLossSection = dataclasses.field(default_factory=GRPOLossSection)
    mu: int = 1  # optimisation passes over each rollout batch
    minibatches: int = 1  # optimizer updates per pass
    # pi_old: "sampler" takes the log-probs the sampler computed for each drawn token (the unwarped policy,
    # as the loss computes it; equal to a forward pass up to float error); "recompute" runs that forward pass
    old_logprobs: Literal["sampler", "recompute"] = "sampler"
    # Completions cut off at sampling.max_new_tokens: "zero" reward, DAPO's soft "penalty" over the last
    # `overlong_buffer` tokens, "mask" them out of the loss, or "none"
    overlong: Literal["none", "zero", "penalty", "mask"] = "zero"
    overlong_buffer: int = 0
    overlong_penalty: float = 1.0
    # DAPO dynamic sampling: drop groups whose rewards are all equal and refill from new prompts
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 4
    ref_refresh_every: int = 0  # iterations between reference <- policy copies (0: the initial policy)

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError(f"grpo.group_size must be >= 2 (advantages are group-relative), got {self.group_size}")
        for name in ("prompts_per_step", "max_prompt_len", "mu", "minibatches", "max_sampling_rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"grpo.{name} must be >= 1, got {getattr(self, name)}")
        if (self.prompts_per_step * self.group_size) % self.minibatches:
            raise ValueError(f"grpo.prompts_per_step * grpo.group_size = {self.prompts_per_step * self.group_size} "
                             f"rows do not split into grpo.minibatches={self.minibatches}")
        if self.advantage not in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"grpo.advantage {self.advantage!r} is not one of {sorted(ADVANTAGE_ESTIMATORS)}")
        if self.sampling.temperature <= 0:
            raise ValueError(f"grpo.sampling.temperature must be > 0 (rollouts are sampled), got "
                             f"{self.sampling.temperature}")
        if self.overlong == "penalty" and not 0 < self.overlong_buffer < self.sampling.max_new_tokens:
            raise ValueError(f"grpo.overlong=penalty needs 0 < grpo.overlong_buffer < "
                             f"grpo.sampling.max_new_tokens, got {self.overlong_buffer}")
        if not self.rewards:
            raise ValueError("grpo.rewards is empty: name at least one reward function")
        stray = sorted(set(self.reward_params) - set(self.rewards))
        if stray:
            raise ValueError(f"grpo.reward_params given for {stray}, which are not in grpo.rewards")
        self._check_loss()

    def _check_loss(self) -> None:
        """Dr. GRPO's constant is the generation budget; a reference refresh needs a reference (beta > 0)."""
        loss = self.loss
        if loss.aggregation == "constant":
            if loss.max_completion_length is None:
                budget = self.sampling.max_new_tokens
                object.__setattr__(self, "loss", dataclasses.replace(loss, max_completion_length=budget))
            elif loss.max_completion_length != self.sampling.max_new_tokens:
                raise ValueError(f"grpo.loss.max_completion_length={loss.max_completion_length} differs from "
                                 f"grpo.sampling.max_new_tokens={self.sampling.max_new_tokens}: Dr. GRPO's constant "
                                 "aggregation divides by the generation budget; leave grpo.loss.max_completion_length "
                                 "unset (it follows grpo.sampling.max_new_tokens)")
        elif loss.max_completion_length is not None:
            raise ValueError(f"grpo.loss.max_completion_length is read only by grpo.loss.aggregation=constant, not "
                             f"grpo.loss.aggregation={loss.aggregation!r}")
        if self.ref_refresh_every and loss.beta == 0.0:
            raise ValueError(f"grpo.ref_refresh_every={self.ref_refresh_every} refreshes a reference policy that "
                             "grpo.loss.beta=0 never uses (no KL term): set one of them to 0")

    @property
    def rows(self) -> int:
        """Completions per iteration."""
        return self.prompts_per_step * self.group_size


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
    objective: Literal["sft", "dpo", "prm", "grpo"] = "sft"
    output_dir: str = "runs/default"
    model: ModelSection = dataclasses.field(default_factory=lambda: ModelSection(init={}))
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    grpo: GRPOSection | None = None  # required by objective grpo
    dpo: DPOSection | None = None  # objective dpo (defaults when absent)
    prm: PRMSection | None = None  # objective prm (defaults when absent)
    sandbox: SandboxConfig = dataclasses.field(default_factory=SandboxConfig)  # GRPO: layers programs must get
    logging: LoggingSection = dataclasses.field(default_factory=LoggingSection)  # e.g. {wandb: {project: ...}}

    def __post_init__(self) -> None:
        for name, section_type in (("dpo", DPOSection), ("prm", PRMSection)):
            if getattr(self, name) is not None and self.objective != name:
                raise ValueError(f"a {name} section is set but objective is {self.objective!r}")
            if self.objective == name and getattr(self, name) is None:
                object.__setattr__(self, name, section_type())
        if (self.objective == "grpo") != (self.grpo is not None):
            raise ValueError("objective grpo needs a grpo section (and only grpo uses one)")
        if self.sandbox.require and self.objective != "grpo":
            raise ValueError(f"sandbox.require is checked by GRPO runs only, and objective is {self.objective!r}")
        if self.train.eval_generate and self.objective in ("dpo", "prm"):
            raise ValueError(f"train.eval_generate (graded generation) needs records with answers, which objective "
                             f"{self.objective} does not read")
        if self.grpo is not None:
            minibatch = self.grpo.rows // self.grpo.minibatches
            if minibatch % self.optimizer.grad_accum:
                raise ValueError(f"a GRPO minibatch of {minibatch} rows (grpo.prompts_per_step * grpo.group_size / "
                                 f"grpo.minibatches) is not a multiple of optimizer.grad_accum="
                                 f"{self.optimizer.grad_accum}")
        elif self.data.batch_size % self.optimizer.grad_accum:
            raise ValueError(f"data.batch_size={self.data.batch_size} is not a multiple of "
                             f"optimizer.grad_accum={self.optimizer.grad_accum}")
        self._check_model()
        self._check_schedule()
        self._check_evaluation()

    @property
    def optimizer_steps(self) -> int:
        """Optimizer updates in the whole run: train.steps, times grpo.mu * grpo.minibatches for GRPO."""
        return self.train.steps * (self.grpo.mu * self.grpo.minibatches if self.grpo is not None else 1)

    def _check_model(self) -> None:
        """A fitted tokenizer needs a freshly initialised model as large as its vocabulary; sequences fit the
        model's context (checked again against a pretrained model's config.json when the run is built)."""
        init = self.model.init or {}
        if self.data.tokenizer == "train":
            if self.model.path is not None:
                raise ValueError(f"data.tokenizer=train fits a new vocabulary, which the embeddings of model.path="
                                 f"{self.model.path} do not know: set data.tokenizer to model.path's tokenizer")
            if "vocab_size" in init and init["vocab_size"] < self.data.tokenizer_vocab_size:
                raise ValueError(f"model.init.vocab_size={init['vocab_size']} is below data.tokenizer_vocab_size="
                                 f"{self.data.tokenizer_vocab_size}, the fitted tokenizer's size")
        if "max_position_embeddings" in init:
            check_context(self, init["max_position_embeddings"], "model.init.max_position_embeddings")

    def _check_schedule(self) -> None:
        """Warmup ends within an explicit schedule (a warning when it outlasts the run), and a schedule decaying to
        0 does not end before the run does."""
        o, steps = self.optimizer, self.optimizer_steps
        what = "train.steps" if self.grpo is None else "train.steps * grpo.mu * grpo.minibatches"
        horizon = (f"optimizer.total_steps={o.total_steps}" if o.total_steps is not None
                   else f"the run's {steps} optimizer steps ({what})")
        if o.total_steps is not None and o.warmup_steps > o.total_steps:
            raise ValueError(f"optimizer.warmup_steps={o.warmup_steps} exceeds the schedule's horizon, {horizon}: "
                             "the learning rate would never reach optimizer.lr")
        if o.warmup_steps > steps:  # a short try (--set train.steps=N) is legitimate: say so, do not refuse it
            log.warning("optimizer.warmup_steps=%d exceeds %s: the learning rate never reaches optimizer.lr",
                        o.warmup_steps, horizon)
        if o.total_steps is not None and o.total_steps < steps and o.schedule != "constant" and o.min_lr_ratio == 0:
            raise ValueError(f"optimizer.total_steps={o.total_steps} is below the run's {steps} optimizer steps "
                             f"({what}): with optimizer.schedule={o.schedule} and optimizer.min_lr_ratio=0 the "
                             "last steps would train at learning rate 0")

    def _check_evaluation(self) -> None:
        """Evaluation has held-out data. (A cadence longer than the run is allowed: the run still evaluates and
        saves at its end, and `--set train.steps=N` for a short try must not need other keys changed.)"""
        t = self.train
        held_out = bool(self.data.eval) or self.data.eval_fraction > 0
        for key in ("eval_every", "eval_generate"):
            if getattr(t, key) and not held_out:
                raise ValueError(f"train.{key}={getattr(t, key)} but there is no held-out data: set data.eval "
                                 "files or data.eval_fraction")
        if self.objective == "grpo" and t.eval_every and not t.eval_generate:
            raise ValueError(f"train.eval_every={t.eval_every} with train.eval_generate=0: GRPO evaluates only by "
                             "graded generation, so nothing would be evaluated")


def check_context(config: TrainConfig, max_positions: int, source: str) -> None:
    """The longest sequence the run builds fits the model's context; `source` names where max_positions is set."""
    if config.grpo is not None:
        keys = "grpo.max_prompt_len + grpo.sampling.max_new_tokens"
        length = config.grpo.max_prompt_len + config.grpo.sampling.max_new_tokens
    else:
        keys, length = "data.seq_len", config.data.seq_len
    if length > max_positions:
        raise ValueError(f"{keys} = {length} exceeds {source} = {max_positions}")
