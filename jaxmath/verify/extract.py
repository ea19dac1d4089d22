"""Final-answer extraction: find the answer a completion states, in each answer format jaxmath uses.

Extraction is strict: text without a recognised final-answer marker has no answer (None). The
lenient "last number in the text" fallback exists only as an explicit option for scoring base models.
"""
from __future__ import annotations

import re
from typing import Callable

STYLES = ("auto", "boxed", "gsm8k", "think_answer", "steps", "answer_is", "choice")

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*(\{)|\\boxed\s+([^\s$\\{}]+)")
_THINK_END = re.compile(r"<\s*/\s*think\s*>", re.IGNORECASE)
_THINK_START = re.compile(r"<\s*think\s*>", re.IGNORECASE)
_ANSWER_TAGS = re.compile(r"<\s*answer\s*>|(?P<close><\s*/\s*answer\s*>)", re.IGNORECASE)
_HASHES = re.compile(r"####\s*([^\n]*)")
_STEPS_END = re.compile(r"</\s*STEP\s*>|</\s*end_steps\s*>", re.IGNORECASE)
# "The answer is X", "The final answer is X", "Final Answer: X", "Answer: X", a line "A: X".
_ANSWER_IS = re.compile(
    r"(?:the\s+(?:final\s+)?answer\s+is\s*:?|final\s+answer\s*:(?!\s*the\s+final\s+answer)"
    r"|(?:^|\n)[ \t]*(?:answer|A)\s*:)[ \t]*([^\n]*)",  # [ \t]: a \s* here rescans every run of newlines
    re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?:\s+[A-Z]|\s*$)|(?<!\s)\s+I hope it is correct")
_LETTER = re.compile(r"^\s*[\(\[]?\s*(?:\\text\{\s*)?\(?([A-Ea-e])\)?\s*\}?\s*[\)\]]?\s*(?:[.:)]|$)")
_LETTER_ANYWHERE = re.compile(r"\(([A-E])\)|\b([A-E])\b")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def tag_blocks(text: str, tags: re.Pattern[str]) -> list[str]:
    """The text between each opening tag and the next closing tag, `tags` matching both (group `close` set
    for a closing one). Linear time: a lazy `<open>(.*?)<close>` regex rescans the rest of the text from
    every unclosed opening, which makes 100 kB of unclosed tags take seconds."""
    blocks, start = [], None
    for tag in tags.finditer(text):
        if tag.group("close") is not None:
            if start is not None:
                blocks.append(text[start:tag.start()])
                start = None
        elif start is None:
            start = tag.end()
    return blocks


def _match_brace(text: str, open_pos: int) -> int | None:
    """Index of the `}` closing the `{` at `open_pos` (escaped braces skipped), or None when unbalanced."""
    depth = 0
    i = open_pos
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _all_boxed(text: str) -> list[str]:
    """Contents of every `\\boxed{...}` / `\\fbox{...}` (nested braces kept), in order of appearance."""
    found = []
    pos = 0
    while (m := _BOXED.search(text, pos)) is not None:
        if m.group(1) is None:
            found.append(m.group(2))
            pos = m.end()
            continue
        close = _match_brace(text, m.start(1))
        if close is None:
            break
        found.append(text[m.start(1) + 1:close])
        pos = close + 1
    return [f.strip() for f in found]


def _after_think(text: str) -> str | None:
    """The text after the last `</think>`; the whole text when there is no think block; None if unclosed."""
    ends = list(_THINK_END.finditer(text))
    if ends:
        return text[ends[-1].end():]
    return None if _THINK_START.search(text) else text


def _clean_phrase(value: str) -> str:
    """Trim a phrase-style answer: cut at the sentence end, drop surrounding `$` and a final period."""
    if boxed := _all_boxed(value):
        return boxed[-1]
    cut = _SENTENCE_END.search(value)
    if cut is not None:
        value = value[:cut.start()]
    value = value.strip().strip("$").strip()
    return value.rstrip(".").strip()


def _tagged(text: str) -> list[str]:
    """`<answer>...</answer>` contents after `</think>` (a boxed answer inside the tag wins)."""
    body = _after_think(text)
    if body is None:
        return []
    answers = []
    for content in tag_blocks(body, _ANSWER_TAGS):
        boxed = _all_boxed(content)
        answers.append(boxed[-1] if boxed else content.strip().strip("$").strip())
    return answers


def _hashes(text: str) -> list[str]:
    return [_clean_phrase(m) for m in _HASHES.findall(text) if m.strip()]


def _steps(text: str) -> list[str]:
    """`#### answer` after the last closed step of the steps format (or anywhere when no step closes)."""
    ends = list(_STEPS_END.finditer(text))
    return _hashes(text[ends[-1].end():] if ends else text)


def _answer_is(text: str) -> list[str]:
    return [a for a in (_clean_phrase(m) for m in _ANSWER_IS.findall(text)) if a]


def _choice_letter(answer: str) -> str | None:
    m = _LETTER.match(answer)
    if m is None:
        found = _LETTER_ANYWHERE.findall(answer)
        return (found[-1][0] or found[-1][1]) if found else None
    return m.group(1).upper()


def _choices(text: str) -> list[str]:
    """AQuA option letters A-E named by any final-answer marker."""
    candidates = _boxed_or_tagged(text) or _answer_is(text)
    return [letter for c in candidates if (letter := _choice_letter(c)) is not None]


def _boxed_or_tagged(text: str) -> list[str]:
    return _tagged(text) or _all_boxed(text)


def _auto(text: str) -> list[str]:
    """Every final answer in the first format present: answer tags, boxed, `####`, answer phrases."""
    body = _after_think(text)
    if body is None:
        return []
    for finder in (_tagged, _all_boxed, _hashes, _answer_is):
        if found := finder(body):
            return found
    return []


_FINDERS: dict[str, Callable[[str], list[str]]] = {
    "auto": _auto,
    "boxed": _all_boxed,
    "gsm8k": _hashes,
    "think_answer": _tagged,
    "steps": _steps,
    "answer_is": _answer_is,
    "choice": _choices,
}


def extract_all_answers(text: str, style: str = "auto") -> list[str]:
    """Every final answer `text` states in `style`, in order (several differing ones mean a hedged answer)."""
    try:
        finder = _FINDERS[style]
    except KeyError:
        raise ValueError(f"unknown extraction style {style!r}; known styles: {', '.join(STYLES)}") from None
    if not isinstance(text, str):
        raise TypeError(f"extract_answer expects a str completion, got {type(text).__name__}")
    return [a for a in finder(text) if a]


def last_number(text: str) -> str | None:
    """The last number written in `text` (thousands separators dropped), or None."""
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def extract_answer(text: str, style: str = "auto", fallback_last_number: bool = False) -> str | None:
    """The final answer `text` states in `style` (the last one when several), or None when it has none.

    `fallback_last_number=True` returns the text's last number when no marker is found: for base models only.
    """
    answers = extract_all_answers(text, style)
    if answers:
        return answers[-1]
    if fallback_last_number:
        body = _after_think(text)
        return last_number(body) if body is not None else None
    return None
