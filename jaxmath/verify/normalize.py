r"""String normalisation of an extracted answer: one canonical LaTeX spelling before parsing.

Pure text rewriting (no sympy): delimiters, spacing macros, fraction and root shorthands, Unicode
operators, the empty-set spellings, and numbers as LaTeX writes them: thousands separators (`3,\!250`,
`3{,}250`, `3\,250`, `3\ 250`, `3\;250`, and `3,250` outside brackets: groups of exactly three digits),
currency and percent signs, degrees, trailing units in `\text{}`-like groups (with their power:
`12\text{ in}^2` is 12) and `1.5e3` notation. Gold and prediction both pass through here, so each
spelling of a number compares equal to every other. Number-base subscripts (`204_5`) are kept: they
change the value. A plain comma between digits inside brackets stays a separator of items: `(1,234)`
is a pair.
"""
from __future__ import annotations

import re

_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u2014": "-", "\u00d7": r"\times ", "\u22c5": r"\cdot ",
    "\u00b7": r"\cdot ", "\u00f7": r"\div ", "\u03c0": r"\pi ", "\u221e": r"\infty ",
    "\u2264": r"\le ", "\u2265": r"\ge ", "\u2260": r"\ne ", "\u2205": r"\emptyset ",
    "\u00b0": "", "\u00a0": " ", "\u2009": " ", "\u202f": " ", "\u00bd": r"\frac{1}{2}",
    "\u00bc": r"\frac{1}{4}", "\u00be": r"\frac{3}{4}", "\u20ac": "", "\u00a3": "", "\u00a5": "",
}
_SQRT_SIGN = re.compile("\u221a\\s*(\\d+|\\([^()]*\\)|[a-zA-Z])")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)\s*(?=[()\[\]|.]|\\[{}|])")
_LEFT_RIGHT_DOT = re.compile(r"\\(?:left|right)\s*\.")
_MATH_DELIMS = re.compile(r"\\[\[\]()]|\$")
_SPACING = re.compile(r"(?<!\\)\\[,;:! ]|\\q?quad(?![a-zA-Z])|~|\\displaystyle(?![a-zA-Z])|\\textstyle(?![a-zA-Z])")
_FRAC_ALIAS = re.compile(r"\\[dtc]frac(?![a-zA-Z])")
_FRAC_SHORT_BOTH = re.compile(r"\\frac\s*([0-9a-zA-Z])\s*([0-9a-zA-Z])")
_FRAC_SHORT_FIRST = re.compile(r"\\frac\s*([0-9a-zA-Z])\s*(?=\{)")
_FRAC_SHORT_SECOND = re.compile(r"(\\frac\s*\{[^{}]*\})\s*([0-9a-zA-Z])")
_SQRT_SHORT = re.compile(r"\\sqrt\s*([0-9a-zA-Z])")
_DEGREES = re.compile(r"\^\s*(?:\{\s*)?\\circ\s*\}?|\\circ(?![a-zA-Z])|\\degree(?![a-zA-Z])|\^\s*\{\s*o\s*\}|\\textdegree(?![a-zA-Z])")
_PERCENT_DOLLAR = re.compile(r"\\?%|\\\$|\\textdollar(?![a-zA-Z])|\\euro(?![a-zA-Z])|\\pounds(?![a-zA-Z])")
# Thousands written with a spacing command or `{,}`: unambiguous, so also inside brackets. Groups of three.
_SPACED_THOUSANDS = re.compile(r"(?<![\d.])\d{1,3}(?:(?:,\s*\\!|\{,\}|\\[,;: ])\s*\d{3})+(?!\d)")
_SPACED_SEPARATOR = re.compile(r",\s*\\!\s*|\{,\}\s*|\\[,;: ]\s*")
_THOUSANDS = re.compile(r"(?<![\d.,(\[{])\d{1,3}(?:,\d{3})+(?![\d,)\]}])")  # not inside a tuple
_SCIENTIFIC = re.compile(r"(?<![\w.\\])(\d+(?:\.\d+)?)[eE]([+-]?\d+)(?![\w.])")
_EMPTY_SET = re.compile(r"\\varnothing(?![a-zA-Z])|\\emptyset(?![a-zA-Z])|\\\{\s*\\\}|\\O(?![a-zA-Z])")
_TEXT_NAMES = r"\\(?:text|textbf|textit|textrm|textnormal|textup|textsf|mathrm|mathbf|mbox|operatorname)"
_TEXT_MACRO = re.compile(_TEXT_NAMES + r"\s*\{([^{}]*)\}")
_TEXT_MACRO_POWER = re.compile(_TEXT_NAMES + r"\s*\{([^{}]*)\}(\s*\^\s*(?:\d|\{\s*-?\d\s*\}))?")  # `\text{ cm}^2`
_UNIT_WORDS = re.compile(r"^\s*(?:[a-zA-Z]+\.?(?:\s*\^\s*\{?\d\}?)?\s*){1,3}$")
_NUMBER_AND_UNIT = re.compile(r"^\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s+(?=[a-zA-Z])(.*)$")  # `\text{5 cm}`
_AND_OR = re.compile(r"^\s*(?:and|or|,)\s*$")
_WHITESPACE = re.compile(r"\s+")
_RELATION_WORDS = {r"\leq": r"\le", r"\geq": r"\ge", r"\neq": r"\ne", r"\lt": "<", r"\gt": ">",
                   r"\leqslant": r"\le", r"\geqslant": r"\ge"}
_RELATIONS = re.compile("|".join(re.escape(k) + r"(?![a-zA-Z])" for k in sorted(_RELATION_WORDS, key=len, reverse=True)))


def _replace_text_macros(s: str) -> str:
    """Inline `\\text{...}`-like groups: unit words after a value are dropped with their power (`^2`),
    `and`/`or` become commas, a number followed by unit words (`\\text{5 cm}`) keeps the number.

    An answer that is only text (`\\text{Evelyn}`) keeps its words.
    """
    matches = list(_TEXT_MACRO_POWER.finditer(s))
    if not matches:
        return s
    rest = _TEXT_MACRO.sub("", s).strip()
    out = []
    pos = 0
    for m in matches:
        out.append(s[pos:m.start()])
        content, power = m.group(1), m.group(2) or ""
        if _AND_OR.match(content):
            out.append("," + power)
        elif rest and re.search(r"[\d}]\s*$", s[:m.start()]) and _UNIT_WORDS.match(content):
            out.append("")
        elif (number := _NUMBER_AND_UNIT.match(content)) and _UNIT_WORDS.match(number.group(2)):
            out.append(number.group(1))
        else:
            out.append(content + power)
        pos = m.end()
    out.append(s[pos:])
    return "".join(out)


def _scientific(m: re.Match) -> str:
    return f"{m.group(1)}\\times 10^{{{m.group(2)}}}"


def normalize(answer: str) -> str:
    """Canonical LaTeX for an extracted answer (see module docstring for what is rewritten)."""
    s = answer
    for old, new in _UNICODE.items():
        if old in s:
            s = s.replace(old, new)
    s = _SQRT_SIGN.sub(r"\\sqrt{\1}", s)
    s = _PERCENT_DOLLAR.sub("", s)
    s = _LEFT_RIGHT_DOT.sub("", s)
    s = _LEFT_RIGHT.sub("", s)
    s = _MATH_DELIMS.sub("", s)
    s = _SPACED_THOUSANDS.sub(lambda m: _SPACED_SEPARATOR.sub("", m.group(0)), s)
    s = _SPACING.sub(" ", s)
    s = _FRAC_ALIAS.sub(r"\\frac", s)
    s = _FRAC_SHORT_BOTH.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_SHORT_FIRST.sub(r"\\frac{\1}", s)
    s = _FRAC_SHORT_SECOND.sub(r"\1{\2}", s)
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    s = _DEGREES.sub("", s)
    s = _EMPTY_SET.sub(r"\\emptyset ", s)
    s = _RELATIONS.sub(lambda m: _RELATION_WORDS[m.group(0)], s)
    s = _replace_text_macros(s)
    s = _THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), s)
    s = _SCIENTIFIC.sub(_scientific, s)
    s = _WHITESPACE.sub(" ", s).strip()
    s = s.rstrip(".").strip()
    return s


def text_key(answer: str) -> str:
    """A comparison key for text answers: letters and digits only, lower case (`\\text{Evelyn.}` -> `evelyn`)."""
    s = _TEXT_MACRO.sub(r"\1", answer)
    return re.sub(r"[^0-9a-z]", "", s.lower())
