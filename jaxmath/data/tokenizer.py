"""Tokenizers: load a Hugging Face tokenizer from a local directory, or train a small byte-level BPE.

The trained tokenizer lets tests and the CPU demo run with nothing downloaded; it speaks ChatML
(`<|im_start|>role ... <|im_end|>`) like the Qwen family, so prompts render the same way for both.
"""
from __future__ import annotations

import os
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load the tokenizer saved in a local model directory (never downloads), with a pad token set."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory {os.fspath(path)!r} does not exist")
    from transformers import AutoTokenizer  # loads torch when it is installed: only where a tokenizer is read

    try:
        tokenizer = AutoTokenizer.from_pretrained(os.fspath(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load a tokenizer from {os.fspath(path)!r}: {err}") from err
    return ensure_pad_token(tokenizer)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give a tokenizer without a pad token its end-of-sequence token as pad (padding is always masked)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024, *, min_frequency: int = 2,
                    chat_template: str | None = CHATML_TEMPLATE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` (digits split one per token, as in Qwen) with ChatML specials.

    Byte-level means any text round-trips through encode/decode, even characters never seen in training.
    """
    min_vocab = 256 + len(SPECIAL_TOKENS)
    if vocab_size < min_vocab:
        raise ValueError(f"vocab_size={vocab_size} is below the {min_vocab} byte and special tokens")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=IM_END, pad_token=PAD_TOKEN, model_max_length=1 << 20)
    tokenizer.chat_template = chat_template
    return tokenizer
