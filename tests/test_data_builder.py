"""The dataset builder and its CLI on the fixtures: dedup, decontamination, refusing evaluation splits, bad rows,
summary, progress."""
import json
import os
import warnings

import pytest

from jaxmath import cli
from jaxmath.commands.data import main, parse_splits
from jaxmath.data.benchmarks import EvalSplitError
from jaxmath.data.builder import BuildConfig, EvalSplitWarning, build, split_evenly, subsample
from jaxmath.data.readers import BadRowWarning
from jaxmath.data.sources import load_source
from test_data_decontaminate import printed_removed

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "data")
BAD = os.path.join(FIXTURES, "bad", "rows.jsonl")


def _lines(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_cli_builds_dedups_decontaminates_and_reports(tmp_path, capsys):
    out = tmp_path / "train.jsonl"
    status = main(["build", "--output", str(out), "--data-dir", FIXTURES, "--hf-datasets", "gsm8k",
                   "--include-synthetic", "--generators", "numbers__gcd", "arithmetic__div",
                   "--synthetic-samples", "5", "--ngram", "5", "--seed", "3"])
    assert status == 0
    rows = _lines(out)
    # gsm8k train: 4 rows - 1 whitespace-only duplicate - 1 near copy of a test question; synthetic: 3 + 2.
    assert [r["source"] for r in rows].count("gsm8k") == 2
    assert sum(r["source"].startswith("synthetic/") for r in rows) == 5
    assert len({r["question"] for r in rows}) == len(rows)
    # no --decontaminate: every benchmark under --data-dir is checked, the dropped report written by default
    [dropped] = _lines(f"{out}.dropped.jsonl")
    assert dropped["id"] == "gsm8k-train-4" and dropped["eval_set"] == "gsm8k" and dropped["eval_id"] == "gsm8k-test-1"
    # 27 words -> 23 five-grams; only the last holds "altogether" (the test item says "in all"): 22/23 shared.
    assert dropped["overlap"] == round(22 / 23, 4)
    printed = capsys.readouterr()
    assert "[1/4] collecting records" in printed.err and "[4/4] writing" in printed.err  # logged
    # the report is the command's output: the per-source table and the rows each evaluation set removed
    gsm8k_row = next(line for line in printed.out.splitlines() if line.startswith("gsm8k "))
    assert gsm8k_row.split() == ["gsm8k", "4", "0", "0", "1", "1", "2"]
    assert f"wrote 7 records to {out}" in printed.out
    # the fixture folder holds these benchmarks' test files: each is checked, gsm8k removed the one row
    assert printed_removed(printed.out) == {"gsm8k": ["2", "1"], "math500": ["2", "0"], "svamp": ["2", "0"],
                                    "asdiv": ["2", "0"], "aqua": ["2", "0"], "mawps": ["2", "0"],
                                    "total": ["12", "1"]}


def test_evaluation_splits_are_refused_naming_source_split_and_flag(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    # asked for by name, without the flag
    assert main(["build", "--output", str(out), "--data-dir", FIXTURES, "--hf-datasets", "gsm8k", "svamp",
                 "--split", "svamp=test"]) == 1
    err = capsys.readouterr().err
    assert "source 'svamp', split 'test'" in err and "--allow-eval-splits" in err and "benchmark svamp" in err
    assert not out.exists()
    # one split for every source: gsm8k's test split is GSM8K's evaluation set
    assert main(["build", "--output", str(out), "--data-dir", FIXTURES, "--hf-datasets", "gsm8k",
                 "--split", "test"]) == 1
    assert "source 'gsm8k', split 'test'" in capsys.readouterr().err
    # a default split that is missing on disk is never replaced by the split that is there
    assert main(["build", "--output", str(out), "--data-dir", FIXTURES, "--hf-datasets", "svamp",
                 "--allow-eval-splits"]) == 1
    err = capsys.readouterr().err
    assert "source 'svamp': no 'train' split" in err and "found: test (an evaluation split)" in err
    assert "--split svamp=SPLIT" in err and not out.exists()


@pytest.mark.parametrize("source, split", [("gsm8k", "test"), ("math500", "test"), ("svamp", "test"),
                                           ("svamp", "train"), ("asdiv", "validation"), ("asdiv", "test"),
                                           ("aqua_rat", "test"), ("mawps", "test")])
def test_every_split_a_benchmark_scores_is_refused(source, split):
    # svamp's local test file holds all 1000 SVAMP problems, the Hub's train split among them
    with pytest.raises(EvalSplitError, match=f"source '{source}', split '{split}'.*--allow-eval-splits"):
        BuildConfig(output="o", sources=[source], source_splits={source: split})
    BuildConfig(output="o", sources=[source], source_splits={source: split}, allow_eval_splits=True)


@pytest.mark.parametrize("source, split", [("gsm8k", "train"), ("math", "train"), ("math", "test"),
                                           ("aqua_rat", "train"), ("aqua_rat", "validation"), ("mawps", "train"),
                                           ("big_math", "train")])
def test_training_splits_are_accepted(source, split):
    BuildConfig(output="o", sources=[source], source_splits={source: split})


def test_asking_for_an_evaluation_split_trains_on_it_and_skips_that_benchmark(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    with pytest.warns(EvalSplitWarning, match="source 'svamp', split 'test'.*benchmark svamp"):
        assert main(["build", "--output", str(out), "--data-dir", FIXTURES, "--hf-datasets", "gsm8k", "svamp",
                     "--split", "svamp=test", "--allow-eval-splits", "--ngram", "5"]) == 0
    rows = _lines(out)
    assert [r["id"] for r in rows if r["source"] == "svamp"] == ["svamp-test-fix-1", "svamp-test-fix-2"]
    err = capsys.readouterr().err
    assert "decontaminating against gsm8k, math500, asdiv, aqua, mawps (" in err  # svamp is not checked


def test_turning_decontamination_off_and_splits_parsing(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    assert main(["build", "--output", str(out), "--data-dir", FIXTURES, "--hf-datasets", "gsm8k", "--ngram", "5",
                 "--no-decontaminate"]) == 0
    assert len(_lines(out)) == 3 and not os.path.exists(f"{out}.dropped.jsonl")
    assert "decontamination: turned off" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["build", "--output", str(out), "--no-decontaminate", "--decontaminate", "gsm8k"])
    assert parse_splits(["train", "svamp=test"]) == ("train", {"svamp": "test"})
    for bad in (["svamp="], ["=test"], ["a", "b"], ["svamp=test", "svamp=train"]):
        with pytest.raises(ValueError, match="--split"):
            parse_splits(bad)
    with pytest.raises(ValueError, match="split is given for source 'svamp'"):
        BuildConfig(output="o", sources=["gsm8k"], source_splits={"svamp": "test"})


def test_help_names_the_command_it_was_invoked_as(capsys):
    for argv, usage in ((["data", "build", "--help"], "usage: jaxmath data build"),
                        (["data", "pairs", "--help"], "usage: jaxmath data pairs"),
                        (["data", "--help"], "usage: jaxmath data ")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 0 and capsys.readouterr().out.startswith(usage)
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    assert capsys.readouterr().out.startswith("usage: jaxmath data build")


def test_threshold_controls_what_counts_as_contaminated(tmp_path):
    config = dict(output=str(tmp_path / "o.jsonl"), sources=["gsm8k"], data_dir=FIXTURES, ngram=5)
    assert len(build(BuildConfig(**config, threshold=0.95), quiet=True).dropped) == 1  # overlap 22/23
    assert build(BuildConfig(**config, threshold=0.96), quiet=True).dropped == []


def test_bad_rows_skip_with_one_warning_and_strict_names_the_line(tmp_path, capsys):
    args = ["build", "--output", str(tmp_path / "o.jsonl"), "--input", BAD,
            "--field-map", "question=question,answer=answer"]
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
        result = build(config, quiet=True)
    assert result.stats["gsm8k"].over_length == 1 and result.written == 2


def test_ta_samples_spread_over_the_indicators(tmp_path):
    result = build(BuildConfig(output=str(tmp_path / "o.jsonl"), ta_samples=10), quiet=True)
    assert result.written == 10 and len(result.stats) == 10
    assert all(name.startswith("synthetic/ta__") for name in result.stats)


def test_listing_and_help(capsys):
    assert main(["build", "--list-hf-datasets"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("gsm8k", "math500", "aqua_rat", "big_math", "Apache-2.0"))
    assert "refused unless --allow-eval-splits" in listing and "svamp test, train" in listing
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
    with pytest.raises(ValueError, match="evaluation set 'gsm9k' is neither a file nor a known benchmark"):
        BuildConfig(output="o", decontaminate=["gsm9k"])
    assert main(["build", "--output", str(tmp_path / "o"), "--hf-datasets", "gsm8k", "--data-dir", str(tmp_path)]) == 1


def test_sampling_helpers():
    assert subsample(list(range(10)), 4, seed=1) == subsample(list(range(10)), 4, seed=1)
    assert sorted(subsample(list(range(10)), 4, seed=1)) == subsample(list(range(10)), 4, seed=1)
    assert split_evenly(7, ["a", "b", "c"]) == {"a": 3, "b": 2, "c": 2}
