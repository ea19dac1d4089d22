"""Hub publishing: the real huggingface_hub client uploads to a local HTTP endpoint (HF_ENDPOINT) that speaks the
Hub's upload protocol (repo creation, preupload, LFS batch + basic PUT, ndjson commit) and records every request;
the test then checks what arrived byte for byte, and the generated model card's content.

Uploads go through the LFS protocol because HF_HUB_DISABLE_XET=1 (huggingface_hub's own switch): the Xet
storage protocol is a separate content-addressed service that a test server cannot stand in for."""
import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import jaxmath
from jaxmath.config import dump_yaml, load_config
from jaxmath.train.config import TrainConfig
from tiny_hf import save_tiny, tiny_model

ROOT = Path(__file__).resolve().parents[1]
SFT = ROOT / "configs" / "sft" / "tiny-cpu.yaml"
COMMIT = "c0ffee" + "0" * 34


class RecordingHub:
    """A threaded local server answering the Hub endpoints an upload uses; `requests` holds (method, path,
    headers, body) of each, `lfs` the bytes PUT per sha256."""

    def __init__(self):
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.lfs: dict[str, bytes] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while (size := int(self.rfile.readline().strip(), 16)):
                        data += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                    return data
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def reply(self, payload: object, status: int = 200) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):
                body = self.body()
                hub.requests.append(("PUT", self.path, dict(self.headers), body))
                hub.lfs[self.path.rsplit("/", 1)[-1]] = body
                self.reply({})

            def do_POST(self):
                body = self.body()
                hub.requests.append(("POST", self.path, dict(self.headers), body))
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    request = json.loads(body)
                    self.reply({"url": f"{hub.url}/{request['organization']}/{request['name']}"})
                elif path == "/api/validate-yaml":
                    self.reply({"errors": [], "warnings": []})
                elif "/preupload/" in path:
                    files = json.loads(body)["files"]
                    self.reply({"files": [{"path": f["path"], "shouldIgnore": False, "oid": None,
                                           "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular"}
                                          for f in files]})
                elif path.endswith(".git/info/lfs/objects/batch"):
                    objects = json.loads(body)["objects"]
                    self.reply({"transfer": "basic", "objects": [
                        {"oid": o["oid"], "size": o["size"],
                         "actions": {"upload": {"href": f"{hub.url}/lfs-storage/{o['oid']}"}}} for o in objects]})
                elif "/commit/" in path:
                    repo = path.split("/api/models/")[1].split("/commit/")[0]
                    self.reply({"commitUrl": f"{hub.url}/{repo}/commit/{COMMIT}", "commitOid": COMMIT,
                                "pullRequestUrl": None})
                else:
                    self.reply({"error": f"no route {path}"}, 404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def posted(self, fragment: str) -> list[bytes]:
        return [body for method, path, _, body in self.requests if method == "POST" and fragment in path]

    def commit(self) -> dict[str, dict]:
        """The one commit's operations, by path (plus its header under "")."""
        (body,) = self.posted("/commit/")
        lines = [json.loads(line) for line in body.splitlines()]
        return {"": lines[0]["value"], **{line["value"]["path"]: line for line in lines[1:]}}


@pytest.fixture
def hub():
    server = RecordingHub()
    yield server
    server.close()


@pytest.fixture
def run_dir(tmp_path):
    """A finished run's directory: config.yaml, metrics.jsonl, a `jaxmath eval` summary and the HF export."""
    from jaxmath.data.tokenizer import train_tokenizer

    run = tmp_path / "run"
    run.mkdir()
    config = load_config(TrainConfig, SFT, [f"data.train=[{tmp_path / 'gsm8k_train.jsonl'}]", "model.remat=none"])
    dump_yaml(config, run / "config.yaml")
    rows = [{"step": 10, "loss": 2.5, "learning_rate": 1e-3}, {"step": 20, "loss": 1.125, "eval_loss": 1.375},
            {"step": 30, "loss": 0.875, "eval_loss": 0.9375}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "eval").mkdir()
    (run / "eval" / "summary.json").write_text(json.dumps({"gsm8k": {"pass@1": 0.25, "maj@4": 0.375},
                                                           "math500": {"pass@1": 0.125}}))
    tokenizer = train_tokenizer([f"{a} + {a} = {2 * a}" for a in range(300)], vocab_size=280)
    save_tiny(tiny_model("qwen2", vocab_size=len(tokenizer)), run / "hf")
    tokenizer.save_pretrained(run / "hf")
    return run


def client_env(hub: RecordingHub, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN="hf_test_token", HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=str(ROOT), **extra)
    return env


def push(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jaxmath.cli", "push", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def check_card(card: str, version: str = jaxmath.__version__) -> None:
    from huggingface_hub import ModelCard

    parsed = ModelCard(card)
    assert parsed.data.library_name == "transformers" and "jaxmath" in parsed.data.tags
    results = {(r.dataset_name, r.metric_type): r.metric_value for r in parsed.data.eval_results}
    assert results == {("gsm8k", "pass@1"): 0.25, ("gsm8k", "maj@4"): 0.375, ("math500", "pass@1"): 0.125}
    assert f"A model trained with jaxmath {version} (SFT)." in card
    assert "objective: sft" in card and "tokenizer_vocab_size: 384" in card  # the run's config.yaml, verbatim
    assert "gsm8k_train.jsonl" in card and "400 records of `arithmetic__mul`" in card  # data sources
    assert "| eval | gsm8k | pass@1 | 0.25 |" in card
    assert "| training run (held-out) | held-out | eval_loss | 0.9375 |" in card  # the last held-out figure
    assert "Training loss: 2.5000 at step 10 -> 0.8750 at step 30" in card


def test_push_uploads_the_export_and_its_card(hub, run_dir, tmp_path):
    proc = push(["--model", str(run_dir / "hf"), "--repo", "someone/tiny-math", "--private"],
                client_env(hub, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert f"pushed: {hub.url}/someone/tiny-math/commit/{COMMIT}" in proc.stdout
    for method, path, headers, _ in hub.requests:  # the token goes to the Hub (not to the LFS storage URL)
        auth = {k.lower(): v for k, v in headers.items()}.get("authorization")
        assert auth == (None if path.startswith("/lfs-storage/") else "Bearer hf_test_token"), (method, path)
    (create,) = hub.posted("/api/repos/create")
    assert json.loads(create) == {"name": "tiny-math", "organization": "someone", "visibility": "private"}
    commit = hub.commit()
    assert "jaxmath" in commit[""]["summary"]
    local = sorted(str(p.relative_to(run_dir / "hf")) for p in (run_dir / "hf").iterdir())
    assert sorted(k for k in commit if k) == sorted([*local, "README.md"])
    weights = (run_dir / "hf" / "model.safetensors").read_bytes()
    sha = hashlib.sha256(weights).hexdigest()
    assert commit["model.safetensors"] == {"key": "lfsFile", "value": {"path": "model.safetensors", "algo": "sha256",
                                                                        "oid": sha, "size": len(weights)}}
    assert hub.lfs[sha] == weights  # the weights arrived byte for byte
    for name in local:
        if name != "model.safetensors":
            assert base64.b64decode(commit[name]["value"]["content"]) == (run_dir / "hf" / name).read_bytes()
    card = base64.b64decode(commit["README.md"]["value"]["content"]).decode()
    check_card(card)
    (validated,) = hub.posted("/api/validate-yaml")  # the client checks the card's metadata before uploading
    assert json.loads(validated)["content"] == card


def test_push_dry_run_prints_the_card_and_uploads_nothing(hub, run_dir, tmp_path):
    proc = push(["--model", str(run_dir / "hf"), "--repo", "someone/tiny-math", "--dry-run"],
                client_env(hub, tmp_path))
    assert proc.returncode == 0, proc.stderr
    check_card(proc.stdout.split("--- would upload")[0].strip() + "\n")
    assert "model.safetensors" in proc.stdout.split("--- would upload")[1]
    assert hub.requests == []


def test_adapter_card_names_peft_and_the_base(tmp_path):
    from flax import nnx

    from jaxmath.checkpoint.peft_io import save_adapter
    from jaxmath.train.publish import model_card, upload_files

    base = save_tiny(tiny_model("qwen2"), tmp_path / "base")
    model = jaxmath.from_pretrained(base, lora_rank=4, lora_alpha=8.0)
    adapter = save_adapter(tmp_path / "run" / "hf_adapter", nnx.to_pure_dict(nnx.state(model)), model.config,
                           base_model="Qwen/Qwen2.5-Math-1.5B")
    assert upload_files(adapter) == ["adapter_config.json", "adapter_model.safetensors"]
    card = model_card(adapter, "someone/tiny-lora")
    assert "library_name: peft" in card and "base_model: Qwen/Qwen2.5-Math-1.5B" in card
    assert 'PeftModel.from_pretrained(base, "someone/tiny-lora")' in card
    assert "No evaluation results were found" in card  # no run directory around it


def test_errors_name_the_problem(hub, run_dir, tmp_path):
    env = client_env(hub, tmp_path)
    proc = push(["--model", str(run_dir), "--repo", "someone/x"], env)
    assert proc.returncode == 1 and "not a HF export (config.json + *.safetensors) nor a PEFT adapter" in proc.stderr
    proc = push(["--model", str(run_dir / "hf"), "--repo", "no-namespace"], env)
    assert proc.returncode == 1 and "expected user/name" in proc.stderr
    proc = push(["--model", str(run_dir / "hf"), "--repo", "someone/x"], {**env, "HF_TOKEN": ""})
    assert proc.returncode == 1 and "hf auth login" in proc.stderr and "HF_TOKEN" in proc.stderr
    proc = push(["--model", str(run_dir / "hf"), "--repo", "someone/x"], {**env, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1 and "offline mode is enabled" in proc.stderr
    assert hub.requests == []
    with pytest.raises(Exception, match="train.push_to_hub uploads the final HF export"):
        load_config(TrainConfig, SFT, ["train.push_to_hub=someone/x", "train.export_hf=false"])
    with pytest.raises(Exception, match="train.push_to_hub='someone/bad name'"):
        load_config(TrainConfig, SFT, ["train.push_to_hub=someone/bad name"])


@pytest.mark.slow
def test_train_push_to_hub_uploads_after_the_final_export(hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    from jaxmath.train.trainer import train

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)  # huggingface_hub reads HF_ENDPOINT once, at import
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # tests/conftest.py turns the Hub off by default
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    overrides = ["train.steps=2", "train.log_every=1", "train.eval_every=0", "train.save_every=0", "model.remat=none",
                 "data.synthetic={arithmetic__add_or_sub: 64}", "train.push_to_hub=someone/sft-run",
                 "train.hub_private=true"]
    out = tmp_path / "run"
    train(load_config(TrainConfig, SFT, overrides), out, progress=False)
    assert json.loads(hub.posted("/api/repos/create")[0])["visibility"] == "private"
    commit = hub.commit()
    weights = (out / "hf" / "model.safetensors").read_bytes()
    assert hub.lfs[commit["model.safetensors"]["value"]["oid"]] == weights
    assert {"config.json", "tokenizer.json", "README.md"} <= set(commit)
    card = base64.b64decode(commit["README.md"]["value"]["content"]).decode()
    assert (out / "config.yaml").read_text().rstrip() in card
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"| training run (held-out) | held-out | eval_loss | {last['eval_loss']:.4g} |" in card
