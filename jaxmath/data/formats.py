"""Prompt/answer formats: the system prompt, the user turn and the SFT target of each, and its grader.

Every format names the `jaxmath.verify.extract_answer` style that reads its final answer back
(`pot` completions are graded by running their program in the sandbox instead). Prompts go through
the tokenizer's chat template when it has one and a plain-text layout otherwise.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping, Sequence

from transformers import PreTrainedTokenizerBase

from jaxmath.data.schema import Record

# GSM8K calculator annotations `<<48/2=24>>` and its final-answer line `#### 72`.
_CALCULATION = re.compile(r"<<([^<>]*?)=([^<>=]*)>>")
_FINAL_LINE = re.compile(r"(?:^|\n)\s*####.*\Z", re.DOTALL)


def strip_final_line(solution: str) -> str:
    """Drop a trailing GSM8K `#### answer` line: every format states the final answer its own way."""
    return _FINAL_LINE.sub("", solution).strip()


def strip_calculations(text: str) -> str:
    """Remove GSM8K calculator annotations, keeping the prose (`48/2 = <<48/2=24>>24` -> `48/2 = 24`)."""
    return _CALCULATION.sub("", text)


def reasoning_text(record: Record) -> str:
    """The record's worked solution as plain prose (no annotations, no final-answer line); may be empty."""
    return strip_calculations(strip_final_line(record.solution or "")).strip()


def solution_steps(solution: str) -> list[str]:
    """Steps-format bodies: one per non-empty solution line, each calculator annotation as `@@@@ a = b @@@@`."""
    steps = []
    for line in strip_final_line(solution).splitlines():
        prose = " ".join(strip_calculations(line).split())
        if not prose:
            continue
        equations = [f"@@@@ {lhs.strip()} = {rhs.strip()} @@@@" for lhs, rhs in _CALCULATION.findall(line)]
        steps.append(" ".join([prose, *equations]))
    return steps


def _think_answer_target(record: Record) -> str:
    return f"<think>\n{reasoning_text(record)}\n</think>\n<answer>\n{record.answer}\n</answer>"


def _boxed_target(record: Record) -> str:
    reasoning = reasoning_text(record)
    if "\\boxed{" in reasoning:
        return reasoning
    conclusion = f"The final answer is $\\boxed{{{record.answer}}}$."
    return f"{reasoning}\n\n{conclusion}" if reasoning else conclusion


def _steps_target(record: Record) -> str:
    steps = solution_steps(record.solution or "")
    body = "\n".join(f"<STEP {i}> {step} </STEP>" for i, step in enumerate(steps, start=1))
    return f"<begin_steps>{body}\n</end_steps> #### {record.answer}"


def _pot_target(record: Record) -> str:
    program = record.metadata.get("program")
    if not isinstance(program, str) or not program.strip():
        raise ValueError(f"record {record.id!r} has no metadata['program'] to train the pot format on")
    return f"```python\n{program.strip()}\n```"


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """One prompt/answer convention: what the model is told, what it should write, and how it is graded."""

    name: str
    system_prompt: str
    extraction_style: str
    make_target: Callable[[Record], str]

    def messages(self, question: str) -> list[dict[str, str]]:
        """The chat turns (system, user) that pose `question`."""
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": question}]

    def target(self, record: Record) -> str:
        """The completion an SFT example teaches for `record` (raises ValueError when it cannot be built)."""
        return self.make_target(record)


FORMATS: dict[str, PromptFormat] = {
    fmt.name: fmt
    for fmt in (
        PromptFormat(
            name="think_answer",
            system_prompt=(
                "A conversation between User and Assistant. The user asks a question, and the Assistant "
                "solves it. The Assistant first thinks about the reasoning process and then gives the "
                "user the answer. The reasoning process and the answer are enclosed within <think> "
                "</think> and <answer> </answer> tags respectively, i.e., <think>\nreasoning process "
                "here\n</think>\n<answer>\nanswer here\n</answer>."),
            extraction_style="think_answer",
            make_target=_think_answer_target,
        ),
        PromptFormat(
            name="boxed",
            system_prompt="Please reason step by step, and put your final answer within \\boxed{}.",
            extraction_style="boxed",
            make_target=_boxed_target,
        ),
        PromptFormat(
            name="steps",
            system_prompt=(
                "Solve the problem in numbered steps. Start with <begin_steps>, write each step as "
                "<STEP k> ... </STEP>, and put every calculation inside the step as @@@@ 10 * 7 = 70 @@@@. "
                "Finish with </end_steps> #### followed by the final answer."),
            extraction_style="steps",
            make_target=_steps_target,
        ),
        PromptFormat(
            name="pot",
            system_prompt=(
                "Solve the problem by writing a Python program in a ```python code block. The program "
                "must store the final answer in a variable named `answer`. You may use math, fractions "
                "and sympy."),
            extraction_style="pot",
            make_target=_pot_target,
        ),
    )
}


def get_format(name: str) -> PromptFormat:
    """The format called `name`; raises ValueError listing the known names."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown prompt format {name!r}; known formats: {sorted(FORMATS)}") from None


def render_messages(messages: Sequence[Mapping[str, str]], tokenizer: PreTrainedTokenizerBase) -> str:
    """Chat turns (system, user, then assistant/user alternating) as text up to where the model writes next.

    Through the chat template when there is one; else plain text, `system\n\nQuestion: q\nAnswer: `, each
    assistant turn written out and each later user turn as a `\n\n...\nAnswer: ` continuation.
    """
    roles = [m.get("role") for m in messages]
    if len(roles) < 2 or roles[:2] != ["system", "user"] or roles[-1] != "user" or any(
            role != ("assistant", "user")[i % 2] for i, role in enumerate(roles[2:])):
        raise ValueError(f"messages must be system, user, then assistant/user turns ending with user; got {roles}")
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    system, question, *rest = (m["content"] for m in messages)
    text = f"{tokenizer.bos_token or ''}{system}\n\nQuestion: {question}\nAnswer: "
    return text + "".join(turn if i % 2 == 0 else f"\n\n{turn}\nAnswer: " for i, turn in enumerate(rest))


def render_prompt(fmt: PromptFormat, question: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """The prompt text up to where the model starts writing, through the chat template when there is one."""
    return render_messages(fmt.messages(question), tokenizer)


def render_example(fmt: PromptFormat, question: str, completion: str,
                   tokenizer: PreTrainedTokenizerBase) -> tuple[str, str]:
    """(prompt, completion text): the completion closed the way the chat template ends a turn, else by eos."""
    prompt = render_prompt(fmt, question, tokenizer)
    if tokenizer.chat_template:
        turns = fmt.messages(question) + [{"role": "assistant", "content": completion}]
        full = tokenizer.apply_chat_template(turns, tokenize=False)
        if full.startswith(prompt):
            return prompt, full[len(prompt):]
    return prompt, completion + (tokenizer.eos_token or "")
