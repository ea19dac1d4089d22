"""Training data from teachers: program-of-thought synthesis (verified in the sandbox) and revision data.

A teacher is an OpenAI-compatible chat-completions endpoint or a jaxmath/HF checkpoint; its completions
are cached in JSONL so nothing is asked twice. Commands: `jaxmath data synthesize`, `jaxmath data revise`.
"""
from jaxmath.synthesis.cache import AskCounts, CompletionCache, ask, cache_key
from jaxmath.synthesis.chat import ChatCompletionsTeacher
from jaxmath.synthesis.local import LocalTeacher
from jaxmath.synthesis.teacher import Teacher, TeacherConfig, TeacherError
from jaxmath.synthesis.teachers import make_teacher

__all__ = ["AskCounts", "ChatCompletionsTeacher", "CompletionCache", "LocalTeacher", "Teacher", "TeacherConfig",
           "TeacherError", "ask", "cache_key", "make_teacher"]
