"""Teacher synthesis against a real HTTP server on 127.0.0.1: canned programs, retries, errors, the cache."""
import json
import socket
import threading
import time
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jaxmath.commands.data import main as data_main
from jaxmath.data.encode import encode_preference
from jaxmath.data.formats import get_format
from jaxmath.data.readers import read_records
from jaxmath.data.tokenizer import train_tokenizer
from jaxmath.inference.config import Sampling
from jaxmath.synthesis import AskCounts, ChatCompletionsTeacher, CompletionCache, TeacherError, ask, cache_key
from jaxmath.synthesis.chat import retry_after_seconds
from jaxmath.verify.sandbox import shared_sandbox

CORRECT = "Six sevens.\n```python\nanswer = 6 * 7\n```"
PROGRAMS = {  # question -> the program the server answers with (gold is 42 everywhere)
    "Q-correct": CORRECT,
    "Q-wrong": "```python\nanswer = 6 * 7 - 1\n```",
    "Q-crash": "```python\nanswer = 42 / 0\n```",
    "Q-nocode": "The answer is 42.",
    "Q-flaky": CORRECT,  # 503 on the first request
    "Q-busy": CORRECT,  # 429 with Retry-After: 1 on the first request
}


class Teacher:
    """A scripted chat-completions server: records every request, answers per question, fails on cue."""

    def __init__(self):
        self.requests: list[dict] = []
        self.failed_once: set[str] = set()
        self.lock = threading.Lock()
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with teacher.lock:
                    teacher.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                             "body": body, "time": time.monotonic()})
                status, headers, reply = teacher.answer(body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, body):
        messages = body["messages"]
        question = messages[1]["content"]
        if question == "Q-bad":
            return 400, {}, {"error": {"message": "model 'nope' does not exist", "type": "invalid_request_error"}}
        if question == "Q-down":
            return 503, {}, {"error": {"message": "overloaded"}}
        with self.lock:
            first = question not in self.failed_once
            self.failed_once.add(question)
        if first and question == "Q-flaky":
            return 503, {}, {"error": {"message": "warming up"}}
        if first and question == "Q-busy":
            return 429, {"Retry-After": "1"}, {"error": {"message": "rate limited"}}
        n = min(body["n"], 2) if question == "Q-capped" else body["n"]
        text = CORRECT if len(messages) > 2 else PROGRAMS.get(question, CORRECT)  # a revision turn: fixed
        if question == "Q-stubborn":  # wrong until its second revision
            text = PROGRAMS["Q-wrong"] if len(messages) < 6 else CORRECT
        choices = [{"index": i, "message": {"role": "assistant", "content": text.replace(
            "Six sevens.", f"Six sevens (seed {body['seed']}, choice {i}).")}, "finish_reason": "stop"}
            for i in range(n)]
        return 200, {}, {"id": "x", "object": "chat.completion", "choices": choices}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    teacher = Teacher()
    yield teacher
    teacher.close()


def write_problems(path, questions):
    path.write_text("".join(json.dumps({"id": q, "question": q, "answer": "42", "source": "test"}) + "\n"
                            for q in questions))
    return path


def test_synthesize_keeps_only_verified_programs_and_reruns_from_the_cache(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAXMATH_TEACHER_API_KEY", "sk-test-123")
    problems = write_problems(tmp_path / "problems.jsonl", list(PROGRAMS))
    out = tmp_path / "pot.jsonl"
    argv = ["synthesize", "--teacher", server.url, "--teacher-model", "teacher-7b", "--input", str(problems),
            "--output", str(out), "--samples", "2", "--verifier-workers", "1", "--chunk", "4",
            "--set", "teacher.backoff_s=0.01"]
    assert data_main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    # 6 problems x 2 samples; nocode has nothing to run; correct/flaky/busy verify (both samples each)
    assert summary == {"problems": 6, "asked": 12, "cached": 0, "ran": 10, "verified": 6, "kept": 3,
                       "sandbox_layers": list(shared_sandbox().layers)}
    # the bar: problems done of all, rate, and the counts so far
    assert "synthesize: 100%" in captured.err and "6/6" in captured.err and "problem/s" in captured.err
    assert "asked=12, cached=0, ran=10, verified=6, kept=3" in captured.err
    assert "HTTP 503: warming up; retry 1/6" in captured.err and "HTTP 429: rate limited" in captured.err

    records = read_records(out)
    assert sorted({r.metadata["source_id"] for r in records}) == ["Q-busy", "Q-correct", "Q-flaky"]
    for record in records:
        assert record.answer == "42" and record.metadata["teacher_answer"] == "42"
        assert record.metadata["teacher"] == "chat:teacher-7b"
        assert get_format("pot").target(record) == "```python\nanswer = 6 * 7\n```"  # what SFT trains on
    chat = [r for r in server.requests if r["path"] == "/v1/chat/completions"]
    assert len(chat) == len(server.requests) == 6 + 2  # one request per problem, plus the 503 and the 429 retried
    assert {r["auth"] for r in server.requests} == {"Bearer sk-test-123"}
    body = server.requests[0]["body"]
    assert body["model"] == "teacher-7b" and body["n"] == 2 and body["temperature"] == 0.7
    assert body["messages"][0] == {"role": "system", "content": get_format("pot").system_prompt}
    busy = [r["time"] for r in server.requests if r["body"]["messages"][1]["content"] == "Q-busy"]
    assert len(busy) == 2 and busy[1] - busy[0] >= 1.0  # Retry-After: 1 was waited out

    first_output = out.read_text()
    asked_before = len(server.requests)
    assert data_main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(server.requests) == asked_before  # nothing asked twice
    assert summary == {"problems": 6, "asked": 0, "cached": 12, "ran": 10, "verified": 6, "kept": 3,
                       "sandbox_layers": list(shared_sandbox().layers)}
    assert out.read_text() == first_output

    assert data_main([*argv, "--samples", "3"]) == 0  # one more sample: only the new ones are asked
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["asked"], summary["cached"]) == (6, 12) and len(server.requests) == asked_before + 6
    assert {r["body"]["seed"] for r in server.requests[asked_before:]} == {2}  # sample 2 is seeded apart


def test_bad_request_fails_at_once_naming_status_and_message(server, tmp_path, capsys):
    teacher = ChatCompletionsTeacher(server.url, "nope", sleep=pytest.fail)
    with pytest.raises(TeacherError, match=r"HTTP 400 \(Bad Request\): model 'nope' does not exist"):
        teacher.complete([{"role": "system", "content": "s"}, {"role": "user", "content": "Q-bad"}], 1, Sampling())
    assert len(server.requests) == 1  # never retried
    problems = write_problems(tmp_path / "bad.jsonl", ["Q-bad"])
    assert data_main(["synthesize", "--teacher", server.url, "--teacher-model", "nope", "--input", str(problems),
                      "--output", str(tmp_path / "out.jsonl"), "--verifier-workers", "1"]) == 1
    assert "HTTP 400" in capsys.readouterr().err and not (tmp_path / "out.jsonl").exists()


def test_retries_back_off_and_honour_retry_after(server):
    waits = []
    teacher = ChatCompletionsTeacher(server.url, "m", backoff_s=2.0, max_retries=2, sleep=waits.append,
                                     jitter_seed=0)
    flaky = [{"role": "system", "content": "s"}, {"role": "user", "content": "Q-flaky"}]
    assert teacher.complete(flaky, 1, Sampling()) == [CORRECT.replace("Six sevens.", "Six sevens (seed 0, choice 0).")]
    assert len(waits) == 1 and 1.0 <= waits[0] < 2.0  # backoff_s * 2**0 with jitter in [0.5, 1)
    waits.clear()
    teacher.complete([{"role": "system", "content": "s"}, {"role": "user", "content": "Q-busy"}], 1, Sampling())
    assert waits == [1.0]  # the server's Retry-After, not the backoff
    waits.clear()
    with pytest.raises(TeacherError, match=r"no answer after 3 attempt\(s\); last error: HTTP 503: overloaded"):
        teacher.complete([{"role": "system", "content": "s"}, {"role": "user", "content": "Q-down"}], 1, Sampling())
    assert len(waits) == 2 and 1.0 <= waits[0] < 2.0 and 2.0 <= waits[1] < 4.0  # doubling


def test_connection_refused_is_retried_then_reported():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    waits = []
    teacher = ChatCompletionsTeacher(f"http://127.0.0.1:{port}/v1", "m", max_retries=3, sleep=waits.append,
                                     backoff_s=0.5, max_backoff_s=1.0)
    with pytest.raises(TeacherError, match=r"after 4 attempt\(s\).*(refused|URLError)"):
        teacher.complete([{"role": "system", "content": "s"}, {"role": "user", "content": "q"}], 1, Sampling())
    assert len(waits) == 3 and max(waits) <= 1.0  # capped at max_backoff_s


def test_server_returning_fewer_choices_is_asked_for_the_rest_with_a_shifted_seed(server):
    teacher = ChatCompletionsTeacher(server.url, "m")
    texts = teacher.complete([{"role": "system", "content": "s"}, {"role": "user", "content": "Q-capped"}], 3,
                             Sampling(seed=5))
    assert [(r["body"]["n"], r["body"]["seed"]) for r in server.requests] == [(3, 5), (1, 7)]
    assert len(texts) == 3 and len(set(texts)) == 3


def test_retry_after_header_forms():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None


class FakeTeacher:
    """Counts what it is asked; answers `<prompt>#<k>` for the k-th completion it writes for a prompt."""

    backend, model = "fake", "m"

    def __init__(self):
        self.asked: list[tuple[int, int]] = []

    def prompt_text(self, messages):
        return messages[-1]["content"]

    def sample(self, conversations, wanted, sampling):
        for i, indices in enumerate(wanted):
            if indices:
                self.asked.append((i, list(indices)))
                yield i, [f"{self.prompt_text(conversations[i])}#{k}" for k in indices]


def conversations(*questions):
    return [[{"role": "system", "content": "s"}, {"role": "user", "content": q}] for q in questions]


def test_cache_asks_only_for_missing_samples_and_survives_a_torn_line(tmp_path, caplog):
    path, teacher, sampling = tmp_path / "cache.jsonl", FakeTeacher(), Sampling(temperature=0.7)
    with CompletionCache(path) as cache:
        counts = AskCounts()
        assert ask(teacher, conversations("a", "b"), 2, sampling, cache, counts) == [["a#0", "a#1"], ["b#0", "b#1"]]
        assert (counts.asked, counts.cached) == (4, 0)
    with open(path, "ab") as handle:
        handle.write(b'{"key": "abc", "completion": "to')  # a crash mid-write
    with CompletionCache(path) as cache:
        assert "ignoring a torn last line" in caplog.text and len(cache) == 4
        counts, teacher.asked = AskCounts(), []
        out = ask(teacher, conversations("a", "b", "c"), 3, sampling, cache, counts)
        assert out == [["a#0", "a#1", "a#2"], ["b#0", "b#1", "b#2"], ["c#0", "c#1", "c#2"]]
        assert teacher.asked == [(0, [2]), (1, [2]), (2, [0, 1, 2])] and (counts.asked, counts.cached) == (5, 4)
    lines = path.read_text().splitlines()
    assert len(lines) == 9 and all(json.loads(line)["completion"] for line in lines)  # the torn tail was cut
    with CompletionCache(path) as cache:
        teacher.asked = []
        ask(teacher, conversations("a", "b", "c"), 3, sampling, cache)
        assert teacher.asked == []


def test_cache_keys_separate_settings_models_and_samples(tmp_path):
    teacher, other, warm = FakeTeacher(), FakeTeacher(), Sampling(temperature=0.7)
    other.model = "m2"
    base = cache_key(teacher, "p", warm, 0)
    assert base == cache_key(FakeTeacher(), "p", Sampling(temperature=0.7), 0)
    assert len({base, cache_key(teacher, "p", warm, 1), cache_key(other, "p", warm, 0),
                cache_key(teacher, "p", Sampling(temperature=0.8), 0), cache_key(teacher, "q", warm, 0)}) == 5


def test_corrupt_cache_line_in_the_middle_is_an_error_naming_it(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text('{"key": "a", "completion": "x"}\nnot json\n{"key": "b", "completion": "y"}\n')
    with pytest.raises(ValueError, match=r"cache.jsonl:2: not a cache entry"):
        CompletionCache(path)


def test_missing_teacher_or_model_is_a_clear_error(tmp_path, monkeypatch, capsys):
    for name in ("JAXMATH_TEACHER_BASE_URL", "OPENAI_BASE_URL", "JAXMATH_TEACHER_MODEL"):
        monkeypatch.delenv(name, raising=False)
    problems = write_problems(tmp_path / "p.jsonl", ["Q-correct"])
    base = ["synthesize", "--input", str(problems), "--output", str(tmp_path / "o.jsonl")]
    assert data_main(base) == 1
    assert "no teacher: pass --teacher URL_OR_PATH" in capsys.readouterr().err
    assert data_main([*base, "--teacher", "http://127.0.0.1:9/v1"]) == 1
    assert "needs a model name" in capsys.readouterr().err
    assert data_main([*base, "--teacher", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert data_main([*base, "--set", "teacher.concurency=2"]) == 1
    assert "unknown config key(s): teacher.concurency" in capsys.readouterr().err


def test_revise_builds_sft_records_and_dpo_pairs_from_feedback(server, tmp_path, capsys):
    questions = ["Q-correct", "Q-crash", "Q-wrong", "Q-nocode", "Q-stubborn"]
    problems = write_problems(tmp_path / "problems.jsonl", questions)
    out = tmp_path / "revise"
    argv = ["revise", "--teacher", server.url, "--teacher-model", "m", "--input", str(problems), "--samples", "1",
            "--rounds", "2", "--output-dir", str(out), "--verifier-workers", "1"]
    assert data_main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # round 1 revises 4 failing samples (3 fixed), round 2 the stubborn one; 5 first tries + 4 + 1 revisions asked
    assert summary == {"problems": 5, "samples": 5, "asked": 10, "cached": 0, "ran": 9, "verified_first_try": 1,
                       "revisions": 5, "verified_after_revision": 4, "dpo_pairs": 4,
                       "sandbox_layers": list(shared_sandbox().layers)}
    revision_requests = [r["body"]["messages"] for r in server.requests if len(r["body"]["messages"]) > 2]
    assert len(revision_requests) == 5
    crash = next(m for m in revision_requests if m[1]["content"] == "Q-crash")
    assert [t["role"] for t in crash] == ["system", "user", "assistant", "user"]
    assert crash[2]["content"] == PROGRAMS["Q-crash"]
    assert "Running your program failed (error):\nZeroDivisionError: division by zero" in crash[3]["content"]
    assert "42" not in crash[3]["content"].replace(PROGRAMS["Q-crash"], "")  # the gold is never revealed

    rows = {r["question"]: r for r in map(json.loads, (out / "revisions.jsonl").read_text().splitlines())}
    assert set(rows) == {"Q-crash", "Q-wrong", "Q-nocode", "Q-stubborn"}
    assert rows["Q-wrong"]["feedback"].startswith("Your final answer, 41, is wrong.")
    assert rows["Q-nocode"]["feedback"].startswith("Your reply has no ```python code block")
    assert rows["Q-stubborn"]["rounds"] == 2 and len(rows["Q-stubborn"]["history"]) == 2
    assert all(r["revision"].endswith("```python\nanswer = 6 * 7\n```") for r in rows.values())
    records = read_records(out / "sft.jsonl")
    assert len(records) == 4 and {r.metadata["rounds"] for r in records} == {1, 2}
    assert {get_format("pot").target(r) for r in records} == {"```python\nanswer = 6 * 7\n```"}
    pairs = [json.loads(line) for line in (out / "dpo.jsonl").read_text().splitlines()]
    assert sorted(p["question"] for p in pairs) == ["Q-crash", "Q-nocode", "Q-stubborn", "Q-wrong"]  # distinct
    for pair in pairs:
        history = rows[pair["question"]]["history"]
        assert pair["chosen"] == rows[pair["question"]]["revision"] == history[-1]["completion"]
        assert pair["rejected"] in [rows[pair["question"]]["first_attempt"], *(h["completion"] for h in history[:-1])]
        assert "answer = 6 * 7\n" not in pair["rejected"]
    tokenizer = train_tokenizer([CORRECT, *PROGRAMS.values()] * 5, vocab_size=300)
    encoded = encode_preference(pairs[0], tokenizer, get_format("pot"))  # what DPO training reads
    assert encoded["chosen"]["loss_mask"].sum() > 0 and encoded["rejected"]["loss_mask"].sum() > 0

    asked = len(server.requests)
    assert data_main(argv) == 0  # the whole run again, served from the cache
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["cached"] == 10
    assert len(server.requests) == asked


def test_config_file_flags_and_environment_fallbacks(server, tmp_path, monkeypatch, capsys):
    for name in ("JAXMATH_TEACHER_BASE_URL", "JAXMATH_TEACHER_API_KEY", "JAXMATH_TEACHER_MODEL"):
        monkeypatch.delenv(name, raising=False)
    problems = write_problems(tmp_path / "p.jsonl", ["Q-correct"])
    config = tmp_path / "synth.yaml"
    config.write_text(f"teacher: {{base_url: '{server.url}', model: m, api_key: sk-from-config}}\n"
                      f"input: ['{problems}']\noutput: '{tmp_path / 'a.jsonl'}'\nsamples: 1\nverifier_workers: 1\n")
    assert data_main(["synthesize", "--config", str(config), "--samples", "2"]) == 0  # the flag wins
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["kept"] == 1
    sent = [(r["auth"], r["body"]["n"], r["body"]["model"]) for r in server.requests]
    assert sent == [("Bearer sk-from-config", 2, "m")]

    monkeypatch.setenv("OPENAI_BASE_URL", server.url)  # nothing about the teacher in the config: the environment
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("JAXMATH_TEACHER_MODEL", "env-model")
    config.write_text(f"input: ['{problems}']\noutput: '{tmp_path / 'b.jsonl'}'\nverifier_workers: 1\n")
    assert data_main(["synthesize", "--config", str(config), "--quiet"]) == 0
    assert (server.requests[-1]["auth"], server.requests[-1]["body"]["model"]) == ("Bearer sk-openai", "env-model")
    err = capsys.readouterr().err
    assert "synthesize:" not in err and "1/1" not in err  # no bar


def test_sampling_settings_nest_under_sampling_and_flat_keys_show_the_new_spelling(tmp_path):
    from jaxmath.config import ConfigError, from_dict
    from jaxmath.synthesis.config import SynthesisConfig

    config = from_dict(SynthesisConfig, {"output": "o.jsonl", "sampling": {"seed": 3, "stop_strings": ["\n\n"]}})
    assert config.sampling == Sampling(max_new_tokens=1024, temperature=0.7, seed=3, stop_strings=("\n\n",))
    with pytest.raises(ConfigError, match=r"stop is now sampling.stop_strings \(write `sampling: "
                                          r"\{stop_strings: \[\"END\"\]\}`\); temperature is now sampling.temperature"):
        from_dict(SynthesisConfig, {"output": "o.jsonl", "temperature": 0.2, "stop": ["END"]})
