"""Decontamination: how texts are matched to evaluation questions, which benchmarks are checked by default, and
the rows each removed (fixture rows carry the benchmark they were written to collide with)."""
import collections
import json
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from jaxmath import evaluation
from jaxmath.data import benchmarks
from jaxmath.commands.data import main
from jaxmath.data.builder import BuildConfig, build
from jaxmath.data.decontaminate import Match, NgramIndex, default_eval_sets, eval_questions, ngrams, words
from jaxmath.data.readers import FieldMap, SkipLog

DATA = os.path.join(os.path.dirname(__file__), "fixtures", "decontamination")
TRAIN = os.path.join(DATA, "train.jsonl")
EXTRA = os.path.join(DATA, "extra_eval.jsonl")
TRAIN_LAYOUT = FieldMap(question=("question",), answer="answer", metadata=("expect",))


def printed_removed(err: str) -> dict[str, list[str]]:
    """The decontamination table a command printed: eval set -> [questions, removed]."""
    table = err.split("removed per evaluation set:\n")[1].split("\n")
    return {line.split()[0]: line.split()[1:] for line in table[2:] if line and not line.startswith(("-", "wrote"))}


def _train_rows():
    with open(TRAIN, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_words_and_ngrams():
    assert words("What's 2+2?") == ["what", "s", "2", "2"]
    assert ngrams(["a", "b"], 3) == {("a", "b")} and ngrams([], 3) == set()


def test_overlap_is_shared_grams_over_the_shorter_texts_grams():
    index = NgramIndex(2)
    index.add("a b c d e", "eval", "e1")  # 4 bigrams
    index.add("p q", "eval", "e2")  # 1 bigram
    assert index.match("a b c d x") == Match("eval", "e1", 0.75)  # 3 of 4 shared
    # e1 inside a longer text: 4 of the text's 9 bigrams, but every one of e1's
    assert index.match("k l m n o a b c d e") == Match("eval", "e1", 1.0)
    assert index.match("x y p q") == Match("eval", "e2", 1.0)
    assert index.match("x y z") is None and index.contaminating("a b c d x", 0.8) is None


def test_the_benchmark_table_is_shared_with_evaluation():
    assert evaluation.load_benchmark is benchmarks.load_benchmark  # evaluation reads the same table
    assert default_eval_sets(DATA) == ["gsm8k", "svamp", "minerva_math", "amc23"]
    assert default_eval_sets(DATA, exclude=["svamp"]) == ["gsm8k", "minerva_math", "amc23"]
    assert default_eval_sets(None) == []
    # a benchmark name reads the split it scores (svamp: Body + Question, as evaluation reads it)
    [(item_id, question), _] = eval_questions("svamp", DATA, SkipLog())
    assert item_id == "svamp-test-chal-1"
    assert question.endswith("new ones. If he has 82 books now, how many books did he sell?")


def test_default_decontamination_removes_what_each_fixture_row_was_written_to_collide_with(tmp_path, capsys):
    expected = collections.Counter(row["expect"] for row in _train_rows() if "expect" in row)
    assert expected == {"gsm8k": 2, "svamp": 1, "minerva_math": 1, "amc23": 1}
    out = tmp_path / "train.jsonl"
    result = build(BuildConfig(output=str(out), data_dir=DATA, inputs=[(TRAIN, TRAIN_LAYOUT)],
                               dropped_report=str(tmp_path / "dropped.jsonl")), quiet=True)
    assert result.removed == {"gsm8k": 2, "svamp": 1, "minerva_math": 1, "amc23": 1}
    assert result.eval_sets == {"gsm8k": 2, "svamp": 2, "minerva_math": 1, "amc23": 2}
    with open(out, encoding="utf-8") as handle:
        kept = [json.loads(line) for line in handle]
    assert [row["metadata"].get("expect") for row in kept] == [None] * 4
    assert {d.id: d.eval_set for d in result.dropped} == {f"train-{i}": row["expect"] for i, row in
                                                         enumerate(_train_rows(), start=1) if "expect" in row}
    # the CLI prints the same counts, and an explicit set adds to the default ones
    assert main(["build", "--output", str(out), "--data-dir", DATA, "--input", TRAIN, "--field-map",
                 "question=question,answer=answer", "--decontaminate", EXTRA]) == 0
    assert printed_removed(capsys.readouterr().out) == {"gsm8k": ["2", "2"], "svamp": ["2", "1"],
                                                        "minerva_math": ["1", "1"], "amc23": ["2", "1"],
                                                        EXTRA: ["1", "1"], "total": ["8", "6"]}


def test_without_local_benchmarks_nothing_is_checked(tmp_path):
    result = build(BuildConfig(output=str(tmp_path / "o.jsonl"), inputs=[(TRAIN, TRAIN_LAYOUT)]), quiet=True)
    assert result.written == len(_train_rows()) and result.eval_sets == {} and result.dropped == []
    result = build(BuildConfig(output=str(tmp_path / "o.jsonl"), data_dir=DATA, inputs=[(TRAIN, TRAIN_LAYOUT)],
                               decontaminate_local_benchmarks=False), quiet=True)
    assert result.written == len(_train_rows())


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300), other=st.text(max_size=300), n=st.integers(1, 15))
def test_any_text_matches_itself_fully_and_others_within_bounds(text, other, n):
    index = NgramIndex(n)
    index.add(other, "eval", "1")
    match = index.match(text)
    assert match is None or 0.0 < match.overlap <= 1.0
    index.add(text, "eval", "2")
    match = index.match(text)
    assert (match is None) == (not words(text))
    assert match is None or match.overlap == 1.0
