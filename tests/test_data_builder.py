"""The dataset builder and its CLI on the fixtures: dedup, decontamination, bad rows, summary, progress."""
import json
import os
import warnings

import pytest

from jaxmath.data.__main__ import main
from jaxmath.data.builder import BuildConfig, NgramIndex, build, ngrams, sample, split_evenly, words
from jaxmath.data.readers import BadRowWarning
from jaxmath.data.sources import load_source

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "data")
BAD = os.path.join(FIXTURES, "bad", "rows.jsonl")


def _lines(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_cli_builds_dedups_decontaminates_and_reports(tmp_path, capsys):
    out = tmp_path / "train.jsonl"
    status = main(["build", "--output", str(out), "--data-dir", FIXTURES, "--hf-datasets", "gsm8k", "svamp",
                   "--include-synthetic", "--generators", "numbers__gcd", "arithmetic__div",
                   "--synthetic-samples", "5", "--decontaminate", "gsm8k:test", "--ngram", "5", "--seed", "3"])
    assert status == 0
    rows = _lines(out)
    # gsm8k train: 4 rows - 1 whitespace-only duplicate - 1 near copy of a test question; svamp: 2 (its only
    # split, test, stands in for the missing train split); synthetic: 3 + 2.
    assert [r["source"] for r in rows].count("gsm8k") == 2
    assert [r["source"] for r in rows].count("svamp") == 2
    assert sum(r["source"].startswith("synthetic/") for r in rows) == 5
    assert len({r["question"] for r in rows}) == len(rows)
    [dropped] = _lines(f"{out}.dropped.jsonl")
    assert dropped["id"] == "gsm8k-train-4" and dropped["eval_set"] == "gsm8k:test" and dropped["eval_id"] == "gsm8k-test-1"
    # 27 words -> 23 five-grams; only the last holds "altogether" (the test item says "in all"): 22/23 shared.
    assert dropped["overlap"] == round(22 / 23, 4)
    err = capsys.readouterr().err
    assert "[1/4] collecting records" in err and "[4/4] writing" in err
    gsm8k_row = next(line for line in err.splitlines() if line.startswith("gsm8k "))
    assert gsm8k_row.split() == ["gsm8k", "4", "0", "0", "1", "1", "2"]
    assert "svamp: no 'train' split" in err


def test_threshold_controls_what_counts_as_contaminated(tmp_path):
    config = dict(output=str(tmp_path / "o.jsonl"), sources=["gsm8k"], data_dir=FIXTURES,
                  decontaminate=["gsm8k:test"], ngram=5)
    assert len(build(BuildConfig(**config, threshold=0.95), progress=None).dropped) == 1  # overlap 22/23
    assert build(BuildConfig(**config, threshold=0.96), progress=None).dropped == []


def test_bad_rows_skip_with_one_warning_and_strict_names_the_line(tmp_path, capsys):
    args = ["build", "--output", str(tmp_path / "o.jsonl"), "--input", BAD, "--field-map", "question=question,answer=answer"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(args) == 0
    [warning] = [w for w in caught if issubclass(w.category, BadRowWarning)]
    assert "skipped 5 bad row(s)" in str(warning.message)
    assert [r["answer"] for r in _lines(tmp_path / "o.jsonl")] == ["4", "25"]
    assert main(args + ["--strict"]) == 1
    assert "rows.jsonl:2: missing field" in capsys.readouterr().err


def test_over_length_records_are_skipped_and_counted(tmp_path):
    from jaxmath.data.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["What is 2 + 2? 4", "What is 5 * 5? 25"] * 20, vocab_size=300)
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    longest = max(len(tokenizer(f"{r.question}\n{r.solution or r.answer}")["input_ids"])
                  for r in load_source("gsm8k", "train", FIXTURES))
    config = BuildConfig(output=str(tmp_path / "o.jsonl"), sources=["gsm8k"], data_dir=FIXTURES,
                         tokenizer=str(tmp_path / "tok"), max_tokens=longest - 1)
    with pytest.warns(BadRowWarning, match="over-length: 1"):
        result = build(config, progress=None)
    assert result.stats["gsm8k"].over_length == 1 and result.written == 2


def test_ta_samples_spread_over_the_indicators(tmp_path):
    result = build(BuildConfig(output=str(tmp_path / "o.jsonl"), ta_samples=10), progress=None)
    assert result.written == 10 and len(result.stats) == 10
    assert all(name.startswith("synthetic/ta__") for name in result.stats)


def test_listing_and_help(capsys):
    assert main(["build", "--list-hf-datasets"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("gsm8k", "math500", "aqua_rat", "big_math", "Apache-2.0"))
    assert main(["build", "--list-generators"]) == 0
    assert "technical_analysis: ta__atr" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["build", "--help"])
    assert exit_info.value.code == 0 and "--decontaminate" in capsys.readouterr().out


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="threshold must be in"):
        BuildConfig(output="o", threshold=0)
    with pytest.raises(ValueError, match="unknown source 'gsm9k'"):
        BuildConfig(output="o", sources=["gsm9k"])
    assert main(["build", "--output", str(tmp_path / "o"), "--hf-datasets", "svamp", "--data-dir", str(tmp_path)]) == 1


def test_ngram_overlap_and_sampling_helpers():
    assert words("What's 2+2?") == ["what", "s", "2", "2"]
    assert ngrams(["a", "b"], 3) == {("a", "b")} and ngrams([], 3) == set()
    index = NgramIndex(2)
    index.add("a b c d e", "eval", "e1")
    assert index.overlap("a b c d x") == (0.75, ("eval", "e1"))
    assert index.overlap("x y z") == (0.0, None)
    assert sample(list(range(10)), 4, seed=1) == sample(list(range(10)), 4, seed=1)
    assert sorted(sample(list(range(10)), 4, seed=1)) == sample(list(range(10)), 4, seed=1)
    assert split_evenly(7, ["a", "b", "c"]) == {"a": 3, "b": 2, "c": 2}
