"""Publish a trained model to the Hugging Face Hub: the HF export (or a PEFT adapter directory) plus a generated
model card with the run's training config, data sources, evaluation results and the jaxmath version.

The run directory is the export's parent when it holds the run's config.yaml (`<run>/hf`, `<run>/hf_adapter`);
evaluation results come from its metrics.jsonl (the last value of each held-out `eval_*` figure) and from
`jaxmath eval --out` summaries inside it (`<run>/*/summary.json`). Uploads use `huggingface_hub` (one commit).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from jaxmath.train.metrics import read_metrics

CARD = "README.md"
MODEL_FILES = ("config.json", "*.safetensors")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class PublishError(RuntimeError):
    """The directory cannot be published as asked (not an export, no token, bad repo id); says what is wrong."""


def check_repo_id(repo_id: str, key: str = "--repo") -> None:
    """A Hub model repository id `user/name` (or `org/name`), checked by huggingface_hub's own validator."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"{key}={repo_id!r} is not a Hub repository id ({err})") from err
    if repo_id.count("/") != 1:
        raise ValueError(f"{key}={repo_id!r}: expected user/name (or organisation/name)")


def check_token(token: str | None = None) -> str:
    """The Hugging Face token to upload with (given, $HF_TOKEN, or saved by `hf auth login`); an error naming
    the fix when there is none, so a run fails at its start rather than after training."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise PublishError("pushing to the Hub needs a Hugging Face token with write access: run `hf auth login` "
                           "or set HF_TOKEN")
    return token


def upload_files(model_dir: str | Path) -> list[str]:
    """The files of a HF export or PEFT adapter directory to upload (relative paths; hidden files and an old
    README.md left out); an error naming what is missing when the directory is neither."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise PublishError(f"{model_dir}: no such directory")
    files = sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(model_dir).parts)
                   and p.name != CARD)
    adapter = all(name in files for name in ADAPTER_FILES)
    model = "config.json" in files and any(f.endswith(".safetensors") for f in files)
    if not (adapter or model):
        raise PublishError(f"{model_dir}: not a HF export (config.json + *.safetensors) nor a PEFT adapter "
                           f"({' + '.join(ADAPTER_FILES)}); found {files[:8] or 'no files'}")
    return files


def find_run_dir(model_dir: str | Path) -> Path | None:
    """The training run an export came from: its parent directory when that holds the run's config.yaml."""
    parent = Path(model_dir).resolve().parent
    return parent if (parent / "config.yaml").is_file() else None


def evaluation_results(run_dir: Path | None) -> list[dict[str, Any]]:
    """Rows {source, benchmark, metric, value}: `jaxmath eval` summaries in the run directory, then the last
    held-out figures of metrics.jsonl."""
    if run_dir is None:
        return []
    rows = []
    for summary in sorted(run_dir.glob("*/summary.json")):
        try:
            content = json.loads(summary.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(content, dict):
            continue
        for benchmark, metrics in content.items():
            if isinstance(metrics, dict):
                rows += [{"source": str(summary.parent.relative_to(run_dir)), "benchmark": benchmark,
                          "metric": metric, "value": value}
                         for metric, value in metrics.items() if _number(value)]
    if (run_dir / "metrics.jsonl").is_file():
        last: dict[str, float] = {}
        for row in read_metrics(run_dir / "metrics.jsonl"):
            last.update({k: v for k, v in row.items() if k.startswith("eval_") and _number(v)})
        rows += [{"source": "training run (held-out)", "benchmark": "held-out", "metric": k, "value": v}
                 for k, v in last.items()]
    return rows


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _hub_id(reference: str | None) -> str | None:
    """`reference` if it names a Hub model (user/name) rather than a local directory."""
    if not reference or Path(reference).exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", reference):
        return None
    return reference


def model_card(model_dir: str | Path, repo_id: str, run_dir: str | Path | None = None) -> str:
    """README.md for the repository: Hub metadata (library, base model, tags, benchmark results as model-index)
    and sections on training, data sources, evaluation, the full training config and usage."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    import jaxmath

    model_dir = Path(model_dir)
    run_dir = Path(run_dir) if run_dir is not None else find_run_dir(model_dir)
    config_text = (run_dir / "config.yaml").read_text() if run_dir is not None else None
    config: dict[str, Any] = (yaml.safe_load(config_text) or {}) if config_text else {}
    adapter_file = model_dir / ADAPTER_FILES[0]
    adapter = json.loads(adapter_file.read_text()) if adapter_file.is_file() else None
    model, data = config.get("model") or {}, config.get("data") or {}
    objective = config.get("objective")
    base = (adapter or {}).get("base_model_name_or_path") or model.get("path")
    results = evaluation_results(run_dir)
    benchmarks = [r for r in results if r["benchmark"] != "held-out"]
    name = repo_id.split("/")[-1]
    token_classifier = (adapter or {}).get("task_type") == "TOKEN_CLS" or objective == "prm"
    metadata = ModelCardData(
        library_name="peft" if adapter else "transformers", base_model=_hub_id(base), model_name=name,
        pipeline_tag="token-classification" if token_classifier else "text-generation",
        tags=["jaxmath", "math", *([objective] if objective else []),
              *(["lora"] if adapter or model.get("lora") else [])],
        eval_results=[EvalResult(task_type="text-generation", dataset_type=r["benchmark"], dataset_name=r["benchmark"],
                                 metric_type=r["metric"], metric_value=r["value"]) for r in benchmarks] or None)
    what = f"A LoRA adapter (PEFT) for `{base}`" if adapter else "A model"
    lines = [f"# {name}", "", f"{what} trained with jaxmath {jaxmath.__version__}"
             + (f" ({objective.upper()})." if objective else "."), ""]
    lines += _training_section(config, run_dir) + _data_section(data, config) + _evaluation_section(results)
    if config_text:
        lines += ["## Training configuration", "", "The run's resolved config (`config.yaml`):", "", "```yaml",
                  config_text.rstrip(), "```", ""]
    lines += _usage_section(repo_id, base, adapter is not None, token_classifier)
    return str(ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n".join(lines)))


def _training_section(config: Mapping[str, Any], run_dir: Path | None) -> list[str]:
    if not config:
        return []
    model, train, optimizer = config.get("model") or {}, config.get("train") or {}, config.get("optimizer") or {}
    start = (f"`{model['path']}`" if model.get("path")
             else f"a random initialisation of {json.dumps(model.get('init') or {})}")
    lines = ["## Training", "", f"- Objective: {config.get('objective')}", f"- Started from: {start}"]
    if model.get("adapter"):
        lines.append(f"- Continued from the adapter `{model['adapter']}`")
    if model.get("lora"):
        lora = model["lora"]
        targets = ", ".join(lora.get("targets", []))
        lines.append(f"- LoRA: rank {lora.get('rank')}, alpha {lora.get('alpha')}, on {targets}")
    lines.append(f"- Steps: {train.get('steps')}; optimizer AdamW, lr {optimizer.get('lr')} "
                 f"({optimizer.get('schedule')}), parameter dtype {model.get('param_dtype')}, "
                 f"compute dtype {model.get('dtype')}")
    rows = read_metrics(run_dir / "metrics.jsonl") if run_dir and (run_dir / "metrics.jsonl").is_file() else []
    losses = [r for r in rows if _number(r.get("loss"))]
    if losses:
        lines.append(f"- Training loss: {losses[0]['loss']:.4f} at step {losses[0]['step']} -> "
                     f"{losses[-1]['loss']:.4f} at step {losses[-1]['step']}")
    return lines + [""]


def _data_section(data: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    if not data:
        return []
    lines = ["## Data sources", ""]
    lines += [f"- Training file: `{path}`" for path in data.get("train") or []]
    lines += [f"- Generated: {count} records of `{name}` (jaxmath.data generators)"
              for name, count in (data.get("synthetic") or {}).items()]
    lines += [f"- Evaluation file: `{path}`" for path in data.get("eval") or []]
    if not data.get("eval") and data.get("eval_fraction"):
        lines.append(f"- Held out for evaluation: {data['eval_fraction']:.0%} of the training records")
    lines.append(f"- Prompt format: {data.get('format')}; sequence length {data.get('seq_len')}; "
                 f"batch {data.get('batch_size')}")
    if config.get("grpo"):
        rewards = ", ".join(f"{k} x {v}" for k, v in (config["grpo"].get("rewards") or {}).items())
        lines.append(f"- GRPO rewards: {rewards}")
    return lines + [""]


def _evaluation_section(results: list[dict[str, Any]]) -> list[str]:
    if not results:
        return ["## Evaluation", "", "No evaluation results were found in the run directory.", ""]
    lines = ["## Evaluation", "", "| source | benchmark | metric | value |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['source']} | {r['benchmark']} | {r['metric']} | {r['value']:.4g} |" for r in results]
    return lines + [""]


def _usage_section(repo_id: str, base: str | None, adapter: bool, token_classifier: bool) -> list[str]:
    auto = "AutoModelForTokenClassification" if token_classifier else "AutoModelForCausalLM"
    if adapter:
        code = ["from peft import PeftModel", f"from transformers import {auto}", "",
                f"base = {auto}.from_pretrained({json.dumps(base or 'BASE_MODEL')})",
                f"model = PeftModel.from_pretrained(base, {json.dumps(repo_id)})"]
    else:
        code = [f"from transformers import {auto}, AutoTokenizer", "",
                f"model = {auto}.from_pretrained({json.dumps(repo_id)})",
                f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(repo_id)})"]
    jax_load = ("jaxmath.from_pretrained(base_dir, adapter=adapter_dir)" if adapter
                else "jaxmath.from_pretrained(model_dir)")
    return ["## Usage", "", "```python", *code, "```", "", f"In JAX, on a downloaded snapshot: `{jax_load}`.", ""]


def push_to_hub(model_dir: str | Path, repo_id: str, private: bool = False, run_dir: str | Path | None = None,
                token: str | None = None) -> str:
    """Create `repo_id` (if needed) and upload the export with its generated model card in one commit; returns
    the commit's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    import jaxmath

    check_repo_id(repo_id)
    model_dir = Path(model_dir)
    files = upload_files(model_dir)
    card = model_card(model_dir, repo_id, run_dir)
    api = HfApi(token=check_token(token))
    api.create_repo(repo_id, private=private, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(model_dir / f)) for f in files]
    operations.append(CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=card.encode()))
    commit = api.create_commit(repo_id, operations, commit_message=f"Upload {model_dir.name} (jaxmath "
                                                                   f"{jaxmath.__version__})")
    return commit.commit_url
