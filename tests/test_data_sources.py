"""Named sources, readers and field maps on the public layouts shipped under tests/fixtures/data."""
import os
import warnings

import datasets
import pytest

from jaxmath.data import sources
from jaxmath.data.readers import BadRowError, BadRowWarning, FieldMap, SkipLog, read_records, value_text
from jaxmath.data.sources import SourceError, describe_sources, load_source

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "data")


def test_gsm8k_answer_comes_from_the_final_line_and_the_solution_is_kept():
    records = load_source("gsm8k", "train", FIXTURES)
    assert [r.answer for r in records] == ["27", "60", "27", "300"]
    assert records[0].id == "gsm8k-train-1" and records[0].source == "gsm8k"
    assert records[0].solution.endswith("#### 27") and records[0].question.startswith("Mia has 12 pencils")


def test_competition_math_extracts_the_boxed_answer_and_math500_uses_its_answer_field():
    math = load_source("math", "train", FIXTURES)
    assert [r.answer for r in math] == ["16", "\\frac{3}{4}"]
    assert math[0].metadata == {"level": "Level 1", "type": "Prealgebra"}
    m500 = load_source("math500", data_dir=FIXTURES)  # default split: test
    assert [r.answer for r in m500] == ["9", "\\frac{5}{6}"]
    assert m500[1].id == "math500-test-test/prealgebra/2.json"


def test_word_problem_layouts_map_onto_one_schema():
    svamp = load_source("svamp", "test", FIXTURES)
    assert svamp[0].question == "Tom had 13 marbles. He found 8 more How many marbles does he have now?"
    assert [r.answer for r in svamp] == ["21", "2.5"] and svamp[1].metadata["Type"] == "Common-Division"
    asdiv = load_source("asdiv", "test", FIXTURES)
    assert [r.answer for r in asdiv] == ["13", "4"] and asdiv[0].metadata["unit"] == "animals"
    assert "unit" not in asdiv[1].metadata
    mawps = load_source("mawps", "test", FIXTURES)
    assert [r.answer for r in mawps] == ["18", "24"] and mawps[1].id == "mawps-test-1"  # idx 1
    big = load_source("big_math", "train", FIXTURES)
    assert big[1].answer == "1024" and big[1].metadata["source"] == "cn_k12"


def test_aqua_lists_the_choices_and_answers_with_the_letter():
    aqua = load_source("aqua_rat", "test", FIXTURES)
    assert aqua[0].question == ("If 5 pens cost $20, how much do 8 pens cost?\n"
                                "Answer Choices: (A) $28 (B) $30 (C) $32 (D) $36 (E) $40")
    assert [r.answer for r in aqua] == ["C", "B"] and aqua[0].solution.startswith("One pen costs")


def test_hub_loading_goes_through_datasets_with_the_same_mapping(monkeypatch):
    calls = []
    hub_rows = [{"id": "calc-1", "question": "Ann has 3 apples and gets 4 more. How many?", "result": "7",
                 "equation": "3+4"}]

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(hub_rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records = load_source("mawps", "test")
    assert calls == [("MU-NLPC/Calc-mawps", "default", "test")]
    assert records[0].answer == "7" and records[0].id == "mawps-test-calc-1"
    assert records[0].metadata == {"equation": "3+4"}


def test_hub_failure_is_one_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(SourceError, match="openai/gsm8k.*local data directory"):
        load_source("gsm8k", "train")


def test_parquet_files_read_through_datasets_match_jsonl(tmp_path):
    rows = [{"problem": "Compute $3 \\cdot 4$.", "answer": "12", "source": "x", "domain": ["a"],
             "llama8b_solve_rate": 0.5}]
    (tmp_path / "big_math").mkdir()
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "big_math" / "train.parquet"))
    [record] = load_source("big_math", "train", tmp_path)
    assert (record.question, record.answer, record.metadata["domain"]) == ("Compute $3 \\cdot 4$.", "12", ["a"])


def test_a_missing_split_names_the_splits_present():
    with pytest.raises(SourceError, match=r"no 'train' split .*found splits: \['test'\]"):
        load_source("svamp", "train", FIXTURES)
    with pytest.raises(SourceError, match="unknown source 'gsm9k'"):
        load_source("gsm9k")


def test_bad_rows_are_counted_per_reason_with_one_warning():
    path = os.path.join(FIXTURES, "bad", "rows.jsonl")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = read_records(path, FieldMap(question=("question",), answer="answer"))
    assert [r.answer for r in records] == ["4", "25"]
    assert [r.id for r in records] == ["rows-1", "rows-8"]  # without an id key, the line number names the row
    [warning] = [w for w in caught if issubclass(w.category, BadRowWarning)]
    message = str(warning.message)
    assert message.startswith("skipped 5 bad row(s)")
    for part in ("invalid JSON: 1", "invalid UTF-8: 1", "missing field: 2", "not an object: 1", "rows.jsonl:2"):
        assert part in message


def test_strict_mode_names_file_and_line():
    path = os.path.join(FIXTURES, "bad", "rows.jsonl")
    with pytest.raises(BadRowError, match=r"rows\.jsonl:2: missing field: field 'answer'"):
        read_records(path, FieldMap(question=("question",), answer="answer"), skips=SkipLog(strict=True))


def test_lone_surrogates_count_as_invalid_utf8(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"question": "bad \\ud800 text", "answer": "1"}\n')
    log = SkipLog()
    assert read_records(path, FieldMap(question=("question",), answer="answer"), skips=log) == []
    assert dict(log.counts) == {"invalid UTF-8": 1}


def test_field_map_parsing():
    spec = FieldMap.parse("question=Body+Question, answer=Answer, id=ID, metadata=Type+Equation")
    assert spec == FieldMap(question=("Body", "Question"), answer="Answer", id="ID", metadata=("Type", "Equation"))
    with pytest.raises(ValueError, match="unknown field map key 'anwser'"):
        FieldMap.parse("question=q,anwser=a")
    with pytest.raises(ValueError, match="names no question key"):
        FieldMap.parse("answer=a")
    with pytest.raises(ValueError, match="needs an answer key"):
        FieldMap.parse("question=q")


def test_records_written_by_the_builder_read_back(tmp_path):
    from jaxmath.data.readers import write_records

    records = load_source("asdiv", "test", FIXTURES)
    write_records(records, tmp_path / "out.jsonl")
    assert read_records(tmp_path / "out.jsonl") == records


def test_value_text():
    assert [value_text(v) for v in (145.0, 2.5, 7, None, [1, 2.0], " x ")] == ["145", "2.5", "7", "", "1, 2", "x"]


def test_listing_names_every_source_with_its_licence():
    table = describe_sources()
    for spec in sources.SOURCES.values():
        assert spec.name in table and spec.hub_id in table and spec.license in table
    assert "train 7,473" in table
