"""Turn one data row into token arrays (SFT example, RL prompt, preference pair, PRM trace).

Training and inference call the same functions, so a prompt or a PRM trace is tokenised identically
in both. A row that cannot become an example raises `schema.BadRow` with a short reason the pipelines count.

Row layouts (Mappings; `id` is optional everywhere and only names the row in messages):
- SFT and RL: a `Record`, or a mapping with Record's fields (`question`, `answer`, `solution`, ...).
- Preference pairs (DPO): `{"question": str, "chosen": str, "rejected": str}`; chosen and rejected are
  assistant completions written in the prompt format's style.
- Step-labelled traces (PRM): `{"question": str, "steps": [str, ...], "labels": [0/1 or bool, ...]}`,
  one label per step, 1 when the step is correct.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from jaxmath.data.formats import PromptFormat, render_example, render_prompt
from jaxmath.data.readers import check_utf8
from jaxmath.data.schema import BadRow, Record

# Each PRM step is followed by this separator; its last token is where the step's label is read.
STEP_SEPARATOR = "\n\n"


def check_text(value: Any, key: str) -> str:
    """`value` if it is a non-blank, UTF-8-encodable string; BadRow naming `key` otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise BadRow("missing field", f"field {key!r} is missing or empty")
    return check_utf8(value, key)


def as_record(row: Record | Mapping[str, Any]) -> Record:
    """A validated Record from a Record or a mapping with Record's field names."""
    if not isinstance(row, Record):
        if not isinstance(row, Mapping):
            raise BadRow("not a record", f"expected a Record or a mapping, got {type(row).__name__}")
        try:
            row = Record.from_dict(row)
        except ValueError as err:
            raise BadRow("missing field", str(err)) from None
    check_text(row.question, "question")
    check_text(row.answer, "answer")
    return row


def encode_text(text: str, tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """Token ids of `text` as int32, with no special tokens added (templates carry their own)."""
    return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int32)


def encode_prompt(question: str, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat) -> np.ndarray:
    """Token ids of the rendered prompt that poses `question` (what a sampler continues)."""
    return encode_text(render_prompt(fmt, question, tokenizer), tokenizer)


def encode_completion(question: str, completion: str, tokenizer: PreTrainedTokenizerBase,
                      fmt: PromptFormat) -> dict[str, np.ndarray]:
    """Prompt + completion ids with `loss_mask` 1 exactly on the completion's tokens (the ones to predict)."""
    prompt_text, completion_text = render_example(fmt, question, completion, tokenizer)
    prompt, answer = encode_text(prompt_text, tokenizer), encode_text(completion_text, tokenizer)
    mask = np.concatenate([np.zeros(len(prompt), np.int32), np.ones(len(answer), np.int32)])
    return {"input_ids": np.concatenate([prompt, answer]), "loss_mask": mask}


def encode_sft(row: Record | Mapping[str, Any], tokenizer: PreTrainedTokenizerBase,
               fmt: PromptFormat) -> dict[str, np.ndarray]:
    """One SFT example: the record's prompt and its format target (`fmt.target`)."""
    record = as_record(row)
    try:
        target = fmt.target(record)
    except ValueError as err:
        raise BadRow("no target", str(err)) from None
    return encode_completion(record.question, target, tokenizer, fmt)


def encode_preference(row: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase,
                      fmt: PromptFormat) -> dict[str, dict[str, np.ndarray]]:
    """A DPO pair: the same prompt completed by `chosen` and by `rejected`, each with its loss mask."""
    if not isinstance(row, Mapping):
        raise BadRow("not a record", f"expected a mapping, got {type(row).__name__}")
    question = check_text(row.get("question"), "question")
    return {side: encode_completion(question, check_text(row.get(side), side), tokenizer, fmt)
            for side in ("chosen", "rejected")}


def encode_prm_trace(question: str, steps: Sequence[str], tokenizer: PreTrainedTokenizerBase,
                     fmt: PromptFormat) -> tuple[np.ndarray, np.ndarray]:
    """Prompt + steps (each followed by STEP_SEPARATOR) and the index of each step's last token."""
    pieces = [encode_prompt(question, tokenizer, fmt)]
    pieces += [encode_text(step.strip() + STEP_SEPARATOR, tokenizer) for step in steps]
    ends = np.cumsum([len(piece) for piece in pieces])[1:] - 1
    return np.concatenate(pieces), ends.astype(np.int32)


def encode_prm(row: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase,
               fmt: PromptFormat) -> dict[str, np.ndarray]:
    """A step-labelled trace: token ids, each step's last-token position and its 0/1 label."""
    if not isinstance(row, Mapping):
        raise BadRow("not a record", f"expected a mapping, got {type(row).__name__}")
    question = check_text(row.get("question"), "question")
    steps, labels = row.get("steps"), row.get("labels")
    if not isinstance(steps, Sequence) or isinstance(steps, str) or not steps:
        raise BadRow("missing field", "field 'steps' must be a non-empty list of strings")
    steps = [check_text(step, f"steps[{i}]") for i, step in enumerate(steps)]
    if (not isinstance(labels, Sequence) or isinstance(labels, str) or len(labels) != len(steps)
            or any(label not in (0, 1) for label in labels)):
        raise BadRow("bad labels", f"'labels' must hold one 0/1 per step ({len(steps)}), got {labels!r:.80}")
    input_ids, positions = encode_prm_trace(question, steps, tokenizer, fmt)
    return {"input_ids": input_ids, "step_positions": positions,
            "step_labels": np.asarray([int(label) for label in labels], np.int32)}
