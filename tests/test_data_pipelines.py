"""Grain pipelines: packing keeps every loss-mask token, shards partition the data, saved iterator
state resumes exactly, bad rows are counted once or raised, and each stage's batch layout is right."""
from __future__ import annotations

import collections
import itertools
import json
import warnings

import numpy as np
import pytest

from jaxmath.data.encode import STEP_SEPARATOR, encode_completion, encode_sft
from jaxmath.data.formats import get_format, render_example, render_prompt
from jaxmath.data.pipelines import (PipelineOptions, preference_pipeline, prm_pipeline,
                                    rl_prompt_pipeline, sft_pipeline)
from jaxmath.data.readers import BadRowError, BadRowWarning
from jaxmath.data.schema import Record
from jaxmath.data.tokenizer import train_tokenizer

FMT = get_format("steps")
ONE_SHARD = PipelineOptions(shard_index=0, shard_count=1)
SEQ, PROMPT = 512, 128


def make_records(n: int) -> list[Record]:
    """Distinct GSM8K-style word problems with 1-4 annotated solution lines (so lengths vary)."""
    records = []
    for i in range(n):
        total, lines = 3 + i, []
        for step in range(1 + i % 4):
            lines.append(f"Then she buys {step + 2} more, so {total}+{step + 2} = <<{total}+{step + 2}="
                         f"{total + step + 2}>>{total + step + 2} apples.")
            total += step + 2
        records.append(Record(id=f"r{i}", question=f"Ann has {3 + i} apples and shops {1 + i % 4} times. "
                              "How many apples does she have?", answer=str(total),
                              solution="\n".join(lines) + f"\n#### {total}"))
    return records


RECORDS = make_records(40)


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [f"{r.question}\n{r.solution}" for r in RECORDS] + [FMT.system_prompt] * 5
    return train_tokenizer(corpus, vocab_size=500)  # examples are 154-280 tokens, prompts 102-103


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def segments(batches):
    """Every example in a list of batches as (token ids, loss mask, positions) tuples."""
    found = []
    for batch in batches:
        for row in range(batch["input_ids"].shape[0]):
            seg = batch["segment_ids"][row]
            for s in range(1, seg.max() + 1):
                where = seg == s
                found.append((tuple(batch["input_ids"][row][where]), tuple(batch["loss_mask"][row][where]),
                              tuple(batch["positions"][row][where])))
    return found


def loss_tokens(batches):
    """All tokens under the loss mask, sorted: packing must neither drop nor add any."""
    return sorted(itertools.chain.from_iterable(b["input_ids"][b["loss_mask"] == 1].tolist() for b in batches))


def assert_batches_equal(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], np.ndarray):
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            elif isinstance(a[key], dict):
                assert_batches_equal([a[key]], [b[key]])
            else:
                assert a[key] == b[key], key


def test_completion_loss_mask_covers_exactly_the_completion(tokenizer):
    example = encode_completion(RECORDS[0].question, "It is 5.", tokenizer, FMT)
    prompt, completion = render_example(FMT, RECORDS[0].question, "It is 5.", tokenizer)
    ids, mask = example["input_ids"], example["loss_mask"]
    assert tokenizer.decode(ids[mask == 0]) == prompt
    assert tokenizer.decode(ids[mask == 1]) == completion == "It is 5.<|im_end|>\n"
    assert mask[: int((mask == 0).sum())].sum() == 0  # the mask is one run at the end


@pytest.mark.parametrize("packing", ["first_fit", "best_fit"])
def test_packed_batches_hold_the_same_examples_and_loss_tokens_as_unpacked(tokenizer, packing):
    kwargs = dict(seq_len=SEQ, batch_size=4, options=ONE_SHARD)
    packed = list(sft_pipeline(RECORDS, tokenizer, FMT, packing=packing, **kwargs))
    unpacked = list(sft_pipeline(RECORDS, tokenizer, FMT, packing=None, **kwargs))
    expected = [encode_sft(r, tokenizer, FMT) for r in RECORDS]
    reference = collections.Counter((tuple(e["input_ids"]), tuple(e["loss_mask"]), tuple(range(len(e["input_ids"]))))
                                    for e in expected)
    assert collections.Counter(segments(packed)) == reference == collections.Counter(segments(unpacked))
    for batch in packed + unpacked:
        assert all(v.shape == (4, SEQ) and v.dtype == np.int32 for v in batch.values())
        assert not batch["loss_mask"][batch["segment_ids"] == 0].any()
    assert loss_tokens(packed) == loss_tokens(unpacked)
    assert len(packed) < len(unpacked) == 10  # packing needs fewer rows; 40 examples / 4 per batch
    assert max(b["segment_ids"].max() for b in packed) > 1


def test_same_seed_same_order_other_seed_other_order(tokenizer):
    def first_ids(seed):
        options = PipelineOptions(seed=seed, shard_index=0, shard_count=1)
        return [b["input_ids"] for b in sft_pipeline(RECORDS, tokenizer, FMT, seq_len=SEQ, batch_size=4,
                                                     packing=None, options=options)]
    assert all(np.array_equal(a, b) for a, b in zip(first_ids(1), first_ids(1)))
    assert not all(np.array_equal(a, b) for a, b in zip(first_ids(1), first_ids(2)))


def test_epochs_repeat_every_example_in_a_new_order(tokenizer):
    options = PipelineOptions(num_epochs=2, shard_index=0, shard_count=1)
    batches = list(sft_pipeline(RECORDS, tokenizer, FMT, seq_len=SEQ, batch_size=4, packing=None, options=options))
    first, second = segments(batches[:10]), segments(batches[10:])
    assert collections.Counter(first) == collections.Counter(second) and len(first) == 40
    assert first != second


@pytest.mark.parametrize("count", [1, 3])
def test_process_shards_are_disjoint_and_complete(tokenizer, count):
    shards = []
    for index in range(count):
        options = PipelineOptions(shard_index=index, shard_count=count)
        shards.append(segments(sft_pipeline(RECORDS, tokenizer, FMT, seq_len=SEQ, batch_size=4, options=options)))
    everything = [s for shard in shards for s in shard]
    assert len(everything) == len(set(everything)) == len(RECORDS)
    assert {s[0] for s in everything} == {tuple(encode_sft(r, tokenizer, FMT)["input_ids"]) for r in RECORDS}


def test_bad_shard_index_is_refused(tokenizer):
    with pytest.raises(ValueError, match="shard_index=3"):
        sft_pipeline(RECORDS, tokenizer, FMT, seq_len=SEQ, batch_size=4,
                     options=PipelineOptions(shard_index=3, shard_count=3))


def build_stage(stage, tokenizer, options):
    """The pipeline of one stage over the fixture records (pairs and traces derived from them)."""
    if stage == "sft":
        return sft_pipeline(RECORDS, tokenizer, FMT, seq_len=SEQ, batch_size=3, options=options)
    if stage == "rl":
        return rl_prompt_pipeline(RECORDS, tokenizer, FMT, max_prompt_len=PROMPT, prompts_per_batch=3,
                                  group_size=2, options=options)
    if stage == "dpo":
        pairs = [{"id": f"p{i}", "question": r.question, "chosen": FMT.target(r), "rejected": f"#### {i}"}
                 for i, r in enumerate(RECORDS)]
        return preference_pipeline(pairs, tokenizer, FMT, seq_len=SEQ, batch_size=3, options=options)
    traces = [{"question": r.question, "steps": r.solution.splitlines()[:-1],
               "labels": [i % 2] * (len(r.solution.splitlines()) - 1)} for i, r in enumerate(RECORDS)]
    return prm_pipeline(traces, tokenizer, FMT, seq_len=SEQ, max_steps=4, batch_size=3, options=options)


@pytest.mark.parametrize("stage", ["sft", "rl", "dpo", "prm"])
def test_restored_iterator_yields_exactly_the_continuation(tokenizer, stage):
    options = PipelineOptions(seed=7, num_epochs=None, shard_index=0, shard_count=1)
    pipeline = build_stage(stage, tokenizer, options)
    iterator = iter(pipeline)
    take(iterator, 5)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = take(iterator, 20)  # crosses the epoch boundary (40 examples / 3 per batch)
    resumed = iter(build_stage(stage, tokenizer, options))
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 20), expected)


def test_rl_prompts_come_in_left_padded_groups(tokenizer):
    options = PipelineOptions(shuffle=False, shard_index=0, shard_count=1)
    batches = list(rl_prompt_pipeline(RECORDS, tokenizer, FMT, max_prompt_len=PROMPT, prompts_per_batch=3,
                                      group_size=2, options=options))
    assert len(batches) == 13  # 40 prompts, 3 per batch, the last partial batch dropped
    batch = batches[0]
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (6, PROMPT)
    assert [r.id for r in batch["records"]] == ["r0", "r0", "r1", "r1", "r2", "r2"]
    assert batch["answers"] == [r.answer for r in batch["records"]]
    for row, record in enumerate(batch["records"]):
        mask = batch["attention_mask"][row]
        n = int(mask.sum())
        assert mask[-n:].all() and not mask[:-n].any()
        assert tokenizer.decode(batch["input_ids"][row][-n:]) == render_prompt(FMT, record.question, tokenizer)
    np.testing.assert_array_equal(batch["input_ids"][0], batch["input_ids"][1])


def test_preference_pairs_share_the_prompt(tokenizer):
    pairs = [{"question": "What is 2+3?", "chosen": "#### 5", "rejected": "#### 6"}]
    batch = next(iter(preference_pipeline(pairs, tokenizer, FMT, seq_len=SEQ // 4, batch_size=2, options=ONE_SHARD)))
    assert "ref_chosen_logps" not in batch
    prompt = render_prompt(FMT, "What is 2+3?", tokenizer)
    for side, text in (("chosen", "#### 5"), ("rejected", "#### 6")):
        ids, mask, loss_mask = (batch[f"{side}_{key}"] for key in ("input_ids", "attention_mask", "loss_mask"))
        assert ids.shape == mask.shape == loss_mask.shape == (2, SEQ // 4) and not mask[1].any()  # 2nd row: padding
        real = mask[0] == 1
        assert tokenizer.decode(ids[0][real & (loss_mask[0] == 0)]) == prompt
        assert tokenizer.decode(ids[0][loss_mask[0] == 1]) == text + "<|im_end|>\n"


def test_preference_pairs_carry_their_reference_log_probs(tokenizer):
    pairs = [{"question": f"What is {i}+3?", "chosen": f"#### {i + 3}", "rejected": "#### 0"} for i in range(5)]
    pairs.insert(2, {"question": "no rejected side", "chosen": "#### 1"})  # skipped: the reference skips it too
    reference = -np.arange(10, dtype=np.float32).reshape(5, 2)
    with pytest.warns(BadRowWarning):
        batches = list(preference_pipeline(pairs, tokenizer, FMT, seq_len=SEQ // 4, batch_size=3,
                                           options=PipelineOptions(shuffle=False, shard_index=0, shard_count=1),
                                           reference_logps=reference))
    assert [b["ref_chosen_logps"].tolist() for b in batches] == [[0, -2, -4], [-6, -8, 0]]
    assert [b["ref_rejected_logps"].tolist() for b in batches] == [[-1, -3, -5], [-7, -9, 0]]
    chosen = [tokenizer.decode(b["chosen_input_ids"][r][b["chosen_loss_mask"][r] == 1]) for b in batches
              for r in range(3)]
    assert chosen[:5] == [f"#### {i + 3}<|im_end|>\n" for i in range(5)]  # row k <-> reference row k
    with pytest.raises(ValueError, match=r"expected \(5, 2\)"), pytest.warns(BadRowWarning):
        preference_pipeline(pairs, tokenizer, FMT, seq_len=SEQ // 4, batch_size=3, options=ONE_SHARD,
                            reference_logps=reference[:4])


def test_prm_labels_sit_on_each_steps_last_token(tokenizer):
    steps = ["First, 2 + 3 = 5.", "Then 5 * 4 = 21."]
    rows = [{"question": "Compute (2+3)*4.", "steps": steps, "labels": [True, False]}]
    pipeline = prm_pipeline(rows, tokenizer, FMT, seq_len=SEQ // 2, max_steps=3, batch_size=1, options=ONE_SHARD)
    batch = next(iter(pipeline))
    ids, positions = batch["input_ids"][0], batch["step_positions"][0]
    prompt = render_prompt(FMT, "Compute (2+3)*4.", tokenizer)
    assert tokenizer.decode(ids[: positions[0] + 1]) == prompt + steps[0] + STEP_SEPARATOR
    assert tokenizer.decode(ids[positions[0] + 1: positions[1] + 1]) == steps[1] + STEP_SEPARATOR
    assert positions[1] + 1 == batch["segment_ids"][0].sum()
    assert batch["step_labels"].tolist() == [[1, 0, 0]] and batch["step_mask"].tolist() == [[1, 1, 0]]
    labels = batch["labels"][0]
    assert labels.shape == (SEQ // 2,) and labels[positions[0]] == 1 and labels[positions[1]] == 0
    assert (labels == -1).sum() == SEQ // 2 - 2  # prm_loss reads only the two step ends


def bad_rows():
    long = Record(id="long", question="Count: " + " ".join(str(i) for i in range(200)), answer="1", solution="1")
    return [
        *RECORDS[:3],
        {"id": "no-answer", "question": "What is 1+1?"},
        Record(id="blank", question="   ", answer="2"),
        Record(id="surrogate", question="bad \udcff byte", answer="2"),
        long,
        {"id": "long2", "question": long.question, "answer": "1"},
    ]


def test_bad_rows_are_skipped_and_counted_in_one_warning(tokenizer):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipeline = sft_pipeline(bad_rows(), tokenizer, FMT, seq_len=SEQ, batch_size=2, options=ONE_SHARD)
    messages = [str(w.message) for w in caught if issubclass(w.category, BadRowWarning)]
    assert len(messages) == 1
    assert messages[0].startswith("skipped 5 bad row(s) -- ")
    assert "invalid UTF-8: 1 (first at SFT row 5 (id 'surrogate'): field 'question'" in messages[0]
    assert "missing field: 2 (first at SFT row 3 (id 'no-answer'): " in messages[0]
    assert "over-length: 2 (first at SFT row 6 (id 'long'): " in messages[0]
    assert pipeline.num_examples == 3
    assert dict(pipeline.skipped.counts) == {"missing field": 2, "invalid UTF-8": 1, "over-length": 2}


def test_strict_mode_raises_naming_the_row(tokenizer):
    options = PipelineOptions(strict=True, shard_index=0, shard_count=1)
    with pytest.raises(BadRowError, match=r"SFT row 3 \(id 'no-answer'\): missing field"):
        sft_pipeline(bad_rows(), tokenizer, FMT, seq_len=SEQ, batch_size=2, options=options)


def test_stage_specific_bad_rows(tokenizer):
    pot = get_format("pot")
    with pytest.warns(BadRowWarning, match="no target: 1 .*'r0'"):
        sft_pipeline(RECORDS[:1] + [Record(id="p", question="1+1?", answer="2", metadata={"program": "answer = 2"})],
                     tokenizer, pot, seq_len=SEQ, batch_size=1, options=ONE_SHARD)
    traces = [{"question": "q", "steps": ["a", "b"], "labels": [1]},
              {"question": "q", "steps": ["a"] * 5, "labels": [1] * 5},
              {"question": "q", "steps": ["a"], "labels": [1]}]
    with pytest.warns(BadRowWarning, match="bad labels: 1 .*; over-length: 1 .*5 steps > limit 4"):
        prm_pipeline(traces, tokenizer, FMT, seq_len=SEQ, max_steps=4, batch_size=1, options=ONE_SHARD)
    with pytest.warns(BadRowWarning, match="missing field: 1 .*'rejected'"):
        preference_pipeline([{"question": "q", "chosen": "a"}, {"question": "q", "chosen": "a", "rejected": "b"}],
                            tokenizer, FMT, seq_len=SEQ, batch_size=1, options=ONE_SHARD)


def test_a_shard_with_no_usable_rows_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="no usable rows"), pytest.warns(BadRowWarning):
        sft_pipeline([{"id": "x"}], tokenizer, FMT, seq_len=SEQ, batch_size=1, options=ONE_SHARD)
