"""The verifier's reward functions for GRPO: pure `f(completions, examples) -> float32[n]`, listed by name in
`VERIFIER_REWARDS` (the registry configs read, with the PRM's step bonus, is `jaxmath.rewards`).

Lengths are in tokens when the caller passes `num_tokens` (one count per completion), otherwise approximated
by whitespace-separated words. Answer checks go through `jaxmath.verify` (strict extraction, no fallback to
"any number in the text"); programs run only inside the sandbox.

Every reward is total: any completion text gives a finite score (texts are parsed in linear time, and
arithmetic and answers are size-bounded). Should one still raise, `jaxmath.rewards.combine_rewards(...,
failures=...)` scores the rows it fails on 0 for it and counts them, as the GRPO loop does.
"""
from __future__ import annotations

import ast
import atexit
import math
import operator
import re
from fractions import Fraction
from typing import Callable, Mapping, Sequence

import numpy as np

from jaxmath.verify.answers import run_completions
from jaxmath.verify.extract import extract_all_answers, tag_blocks
from jaxmath.verify.limits import MAX_ANSWER_CHARS
from jaxmath.verify.normalize import normalize
from jaxmath.verify.pool import Verifier

RewardFn = Callable[..., np.ndarray]


class RewardConfigError(ValueError):
    """A reward's configuration is wrong (unknown name or parameter, missing model): the run must stop,
    unlike an error on one completion, which a guarded call scores 0."""


def _scores(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(-1)


def _lengths(completions: Sequence[str], num_tokens: Sequence[int] | np.ndarray | None) -> np.ndarray:
    if num_tokens is None:
        return np.array([len(c.split()) for c in completions], dtype=np.float64)
    counts = np.asarray(num_tokens, dtype=np.float64).reshape(-1)
    if counts.shape[0] != len(completions) or np.any(counts < 0):
        raise ValueError(f"num_tokens needs one non-negative count per completion ({len(completions)}), "
                         f"got shape {np.shape(num_tokens)}")
    return counts


# --- format ---------------------------------------------------------------------------------------
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_STRICT = re.compile(r"\A<think>\n(?=\S)(?:.*?\S)\n</think>\n<answer>\n(?=\S)(?:.*?\S)\n</answer>\n?\Z", re.DOTALL)
_RELAXED = re.compile(r"<think>.*?</think>\s*<answer>\s*\S.*?</answer>", re.DOTALL)


def _one_of_each_tag(text: str) -> bool:
    return all(text.count(tag) == 1 for tag in _TAGS)


def format_strict(completions: Sequence[str], examples: Sequence[Mapping]) -> np.ndarray:
    """1 for exactly `<think>\\n...\\n</think>\\n<answer>\\n...\\n</answer>` (non-empty parts, nothing around)."""
    return _scores([float(_one_of_each_tag(c) and bool(_STRICT.match(c))) for c in completions])


def format_relaxed(completions: Sequence[str], examples: Sequence[Mapping]) -> np.ndarray:
    """1 when one think block is followed by one non-empty answer block, whatever the whitespace."""
    return _scores([float(_one_of_each_tag(c) and bool(_RELAXED.search(c))) for c in completions])


def tag_count(completions: Sequence[str], examples: Sequence[Mapping], *,
              trailing_penalty: float = 0.001) -> np.ndarray:
    """0.25 per think/answer tag present exactly once, minus `trailing_penalty` per character after </answer>."""
    scores = []
    for text in completions:
        score = 0.25 * sum(text.count(tag) == 1 for tag in _TAGS)
        if text.count("</answer>") == 1:
            score -= trailing_penalty * len(text.split("</answer>", 1)[1].strip())
        scores.append(score)
    return _scores(scores)


# --- length ---------------------------------------------------------------------------------------
def length_bonus(completions: Sequence[str], examples: Sequence[Mapping], *, num_tokens=None,
                 target_tokens: int = 512) -> np.ndarray:
    """Log-shaped bonus for reasoning length: ln(1 + n) / ln(1 + target_tokens), capped at 1."""
    if target_tokens < 1:
        raise RewardConfigError(f"length_bonus: target_tokens must be >= 1, got {target_tokens}")
    n = _lengths(completions, num_tokens)
    return _scores(np.minimum(1.0, np.log1p(n) / math.log1p(target_tokens)))


def brevity(completions: Sequence[str], examples: Sequence[Mapping], *, num_tokens=None,
            per_token: float = -0.0002) -> np.ndarray:
    """Linear length penalty: `per_token` (negative) times the completion's length."""
    return _scores(per_token * _lengths(completions, num_tokens))


# --- step-wise arithmetic (`steps` format) ---------------------------------------------------------
_STEP_TAGS = re.compile(r"<STEP\s*\d+\s*>|(?P<close></STEP>)")
_EQUATION = re.compile(r"@@@@(.*?)@@@@", re.DOTALL)
_OPERAND_TOKEN = re.compile(r"(\d+(?:\.\d+)?|\.\d+)|\S", re.ASCII)  # a number, or one other character
_UNARY_CONTEXT = frozenset("+-*/%(")  # a minus after these (or first) is a sign, not a subtraction
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TIMES_X = re.compile(r"(?<=[\d)])\s*[xX]\s*(?=[\d(.])")  # "10 x 7"
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_LATEX_OPS = re.compile(r"\\(times|cdot|div|left|right)(?![a-zA-Z])")
_LATEX_OP_TEXT = {"times": "*", "cdot": "*", "div": "/", "left": "", "right": ""}
_SYMBOLS = str.maketrans({"×": "*", "·": "*", "÷": "/", "−": "-", "$": None, "€": None, "£": None,
                          "{": "(", "}": ")"})
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
MAX_EXPONENT = 64
MAX_NUMBER_BITS = 333  # about 100 decimal digits
MAX_EQUATION_CHARS = 1000  # longer `@@@@ ... @@@@` text is not arithmetic this reward checks


def _normalise(expr: str) -> str:
    """Python arithmetic from a step's text: LaTeX fractions and operators, x/×/÷ signs, 1,000 separators."""
    if len(expr) > MAX_EQUATION_CHARS:
        raise ValueError(f"arithmetic of {len(expr)} characters (limit {MAX_EQUATION_CHARS})")
    expr = _LATEX_OPS.sub(lambda m: _LATEX_OP_TEXT[m.group(1)], expr)
    while (unnested := _LATEX_FRAC.sub(r"((\1)/(\2))", expr)) != expr:  # innermost first; ends: each pass drops one
        expr = unnested
    expr = _TIMES_X.sub("*", _THOUSANDS.sub("", expr.translate(_SYMBOLS)))
    return expr.replace("^", "**").strip()


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        if not math.isfinite(node.value):
            raise ValueError(f"number out of range: {node.value}")
        value = Fraction(repr(node.value))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _evaluate(node.operand) * (-1 if isinstance(node.op, ast.USub) else 1)
    elif isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and (right.denominator != 1 or abs(right) > MAX_EXPONENT):
            raise ValueError("exponent too large or not an integer")
        value = _OPS[type(node.op)](left, right)
    else:
        raise ValueError(f"not arithmetic: {ast.dump(node)[:80]}")
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > MAX_NUMBER_BITS:
        raise ValueError("number too large")
    return value


def evaluate_arithmetic(expr: str) -> Fraction:
    """Exact value of a plain arithmetic expression (+ - * / // % ^, x and ÷ signs, \\frac, \\times,
    1,000 separators); raises ValueError for anything else, too long or too large."""
    try:
        return _evaluate(ast.parse(_normalise(expr), mode="eval"))
    except (SyntaxError, ZeroDivisionError, OverflowError, RecursionError, MemoryError) as exc:
        raise ValueError(f"cannot evaluate {expr[:80]!r}: {type(exc).__name__}") from None


def _decimals(text: str) -> int | None:
    """Decimals written in a bare number (`3.33` -> 2), None when the text is not a bare number."""
    match = re.fullmatch(r"-?\d*\.(\d+)|-?\d+", _normalise(text))
    return None if match is None else len(match.group(1) or "")


def equation_holds(equation: str) -> bool:
    """Whether `a = b [= c ...]` is arithmetically true; a bare decimal is allowed its written rounding."""
    sides = equation.split("=")
    if len(sides) < 2:
        return False
    try:
        values = [evaluate_arithmetic(side) for side in sides]
    except ValueError:
        return False
    for (left, right), text in zip(zip(values, values[1:]), sides[1:]):
        places = _decimals(text)
        tolerance = Fraction(1, 2 * 10**places) if places else Fraction(0)
        if abs(left - right) > tolerance:
            return False
    return True


def _step_equations(text: str) -> list[list[str]]:
    return [_EQUATION.findall(body) for body in tag_blocks(text, _STEP_TAGS)]


def step_arithmetic(completions: Sequence[str], examples: Sequence[Mapping]) -> np.ndarray:
    """Share of the `@@@@ a = b @@@@` equations inside `<STEP n>` blocks that are arithmetically right."""
    scores = []
    for text in completions:
        equations = [eq for step in _step_equations(text) for eq in step]
        scores.append(sum(map(equation_holds, equations)) / len(equations) if equations else 0.0)
    return _scores(scores)


def _result_value(equation: str) -> Fraction | None:
    try:
        return evaluate_arithmetic(equation.split("=")[-1])
    except ValueError:
        return None


def _operands(expr: str) -> set[Fraction]:
    """The numbers written in `expr`, negative only where the minus is a sign (`-7 + 10`; in `10-7` it is 7)."""
    try:
        tokens = list(_OPERAND_TOKEN.finditer(_normalise(expr)))
    except ValueError:  # too long to be a step's arithmetic
        return set()
    values, sign, previous = set(), 1, None
    for match in tokens:
        token = match.group()
        if match.group(1):
            values.add(sign * Fraction(token))
            sign = 1
        elif token == "-" and (previous is None or previous in _UNARY_CONTEXT):
            sign = -sign
        else:
            sign = 1
        previous = token
    return values


def step_chaining(completions: Sequence[str], examples: Sequence[Mapping]) -> np.ndarray:
    """Share of steps (after the first with an equation) whose equations use an earlier step's result.

    A step uses an earlier result when a number on the left of one of its equations equals the
    right-hand side of an equation in a previous step. One step with equations scores 1; none scores 0.
    """
    scores = []
    for text in completions:
        steps = [eqs for eqs in _step_equations(text) if eqs]
        if not steps:
            scores.append(0.0)
            continue
        earlier: set[Fraction] = set()
        used = []
        for i, equations in enumerate(steps):
            operands = set().union(*(_operands(eq.split("=")[0]) for eq in equations))
            if i:
                used.append(bool(operands & earlier))
            earlier |= {v for v in map(_result_value, equations) if v is not None}
        scores.append(sum(used) / len(used) if used else 1.0)
    return _scores(scores)


# --- answers: correctness, numeric, program of thought ---------------------------------------------
# A plain number after normalisation: integer, decimal, a/b or \frac{a}{b}, optionally signed. Checked
# with a regex, never sympy, because this reward runs in the caller's process on untrusted text.
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+|\d+/\d+|\\frac\{\d+\}\{\d+\})")
_verifier_instance: Verifier | None = None


def _golds(examples: Sequence[Mapping]) -> list[str]:
    golds = []
    for i, example in enumerate(examples):
        if not isinstance(example, Mapping) or example.get("answer") in (None, ""):
            raise ValueError(f"example {i} has no 'answer' field: {str(example)[:200]}")
        golds.append(str(example["answer"]))
    return golds


def _shared_verifier() -> Verifier:
    """One verifier pool per process for the answer rewards, started on first use."""
    global _verifier_instance
    if _verifier_instance is None:
        _verifier_instance = Verifier()
        atexit.register(_verifier_instance.close)
    return _verifier_instance


def hedged(completions: Sequence[str]) -> list[bool]:
    """For each completion, whether it states several final answers not all equivalent to the last.

    The comparisons run in the bounded verifier workers.
    """
    pairs = []  # (completion index, earlier answer, last answer)
    for i, text in enumerate(completions):
        answers = [a.strip() for a in extract_all_answers(text)]
        pairs += [(i, a, answers[-1]) for a in set(answers[:-1]) if a != answers[-1]]
    flags = [False] * len(completions)
    if pairs:
        verdicts = _shared_verifier().compare_batch([p[1] for p in pairs], [p[2] for p in pairs])
        for (i, _, _), verdict in zip(pairs, verdicts):
            flags[i] |= not verdict.correct
    return flags


def correctness(completions: Sequence[str], examples: Sequence[Mapping]) -> np.ndarray:
    """1 when the final answer equals the example's `answer` (bounded verifier workers), else 0.

    A completion with several conflicting final answers scores 0; could-not-verify scores 0.
    """
    golds = _golds(examples)
    verdicts = _shared_verifier().grade_batch(list(completions), golds)
    return _scores([float(v.correct and not h) for v, h in zip(verdicts, hedged(completions))])


def numeric(completions: Sequence[str], examples: Sequence[Mapping]) -> np.ndarray:
    """1 when the completion states exactly one final answer and it is a number (integer, fraction, decimal);
    an answer longer than the verifier's limit (`MAX_ANSWER_CHARS`) scores 0."""
    scores = []
    for text in completions:
        answers = {a.strip() for a in extract_all_answers(text)}
        ok = (len(answers) == 1 and len(answer := answers.pop()) <= MAX_ANSWER_CHARS
              and _PLAIN_NUMBER.fullmatch(normalize(answer).replace(" ", "")) is not None)
        scores.append(float(ok))
    return _scores(scores)


def program_execution(completions: Sequence[str], examples: Sequence[Mapping], *,
                      timeout: float = 5.0) -> np.ndarray:
    """1 when the completion's program runs in the sandbox, its asserts hold, and its value equals `answer`."""
    golds = _golds(examples)
    answered = [(i, r.value) for i, r in enumerate(run_completions(completions, timeout))
                if r is not None and r.ok and r.value is not None]
    verdicts = _shared_verifier().compare_batch([v for _, v in answered], [golds[i] for i, _ in answered])
    scores = np.zeros(len(completions), dtype=np.float32)
    for (i, _), verdict in zip(answered, verdicts):
        scores[i] = float(verdict.correct)
    return scores


# The verifier's rewards by name; `jaxmath.rewards` registers them with the PRM's for configs to name.
VERIFIER_REWARDS: dict[str, RewardFn] = {
    "format_strict": format_strict, "format_relaxed": format_relaxed, "tag_count": tag_count,
    "length_bonus": length_bonus, "brevity": brevity, "step_arithmetic": step_arithmetic,
    "step_chaining": step_chaining, "correctness": correctness, "numeric": numeric,
    "program_execution": program_execution}
