"""`make_teacher`: the teacher a `TeacherConfig` names, an endpoint or a checkpoint, with the environment's
settings filling what the config leaves out."""
from __future__ import annotations

import os

from jaxmath.synthesis.chat import ChatCompletionsTeacher
from jaxmath.synthesis.local import LocalTeacher
from jaxmath.synthesis.teacher import (API_KEY_ENV, BASE_URL_ENV, MODEL_ENV, Teacher, TeacherConfig, TeacherError,
                                       first_env)


def make_teacher(config: TeacherConfig) -> Teacher:
    """The teacher a config names; endpoint settings missing from it come from the environment."""
    if config.path:
        if not os.path.isdir(config.path):
            raise TeacherError(f"teacher checkpoint directory {config.path!r} does not exist "
                               "(an endpoint URL starts with http:// or https://)")
        return LocalTeacher(config.path, config.dtype, config.tokenizer, config.batch_size)
    base_url = config.base_url or first_env(BASE_URL_ENV)
    if not base_url:
        raise TeacherError("no teacher: pass --teacher URL_OR_PATH, set teacher.base_url or teacher.path, "
                           f"or set ${' / $'.join(BASE_URL_ENV)}")
    model = config.model or first_env(MODEL_ENV)
    if not model:
        raise TeacherError(f"the endpoint {base_url} needs a model name: --teacher-model, teacher.model or "
                           f"${MODEL_ENV[0]}")
    return ChatCompletionsTeacher(base_url, model, config.api_key or first_env(API_KEY_ENV),
                                  timeout_s=config.timeout_s, max_retries=config.max_retries,
                                  backoff_s=config.backoff_s, max_backoff_s=config.max_backoff_s,
                                  concurrency=config.concurrency)
