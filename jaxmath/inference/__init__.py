"""Inference: everything that turns a trained model into text, shared by evaluation, GRPO rollouts, teacher
synthesis, PRM labelling and the `jaxmath generate` / `eval` commands.

    sampler.py      the KV-cache sampler `generate` (prefill + one compiled decode loop) and stop strings
    config.py       `Sampling`, the one set of decoding settings (YAML `sampling: {...}`), and seed strides
    loading.py      a model directory loaded for generation: weights on a mesh, tokenizer, stop token ids
    completions.py  prompts in, completions out: bucketed padding, batches, progress
"""
