"""Teacher-synthesis throughput on real GSM8K problems, against a chat-completions server on loopback.

The server plays a teacher that turns each GSM8K training solution's calculator annotations (`<<48/2=24>>`)
into a Python program (one variable per step, the last one the answer) and answers after a fixed latency,
so the figures measure jaxmath's side: requests in flight, sandbox runs, grading, the cache. Prints, per
concurrency, problems/s of a cold run, of a re-run served from the cache, and the share of problems kept.

    python bench/synthesis.py --data-dir ../shared/data --problems 128 --latency 0.1
"""
from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from jaxmath.data.readers import write_records
from jaxmath.data.sources import load_source
from jaxmath.synthesis.config import SynthesisConfig
from jaxmath.synthesis.synthesize import synthesize
from jaxmath.synthesis.teacher import TeacherConfig

CALCULATION = re.compile(r"<<([^<>]*?)=([^<>=]*)>>")


def annotation_program(solution: str) -> str:
    """The solution's calculator steps as a fenced program, or prose when it has none."""
    steps = [expr.replace("x", "*").strip() for expr, _ in CALCULATION.findall(solution)]
    if not steps:
        return "I would rather not write code for this one."
    lines = [f"step{i} = {expr}" for i, expr in enumerate(steps, start=1)] + [f"answer = step{len(steps)}"]
    return "Step by step:\n```python\n" + "\n".join(lines) + "\n```"


def serve(solutions: dict[str, str], latency: float) -> ThreadingHTTPServer:
    """A loopback chat-completions server answering each known question with its annotation program."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(latency)
            text = annotation_program(solutions.get(body["messages"][1]["content"], ""))
            data = json.dumps({"choices": [{"index": i, "message": {"role": "assistant", "content": text}}
                                           for i in range(body["n"])]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("JAXMATH_DATA_DIR", "../shared/data"))
    parser.add_argument("--problems", type=int, default=128)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds the server takes per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--verifier-workers", type=int, default=2)
    args = parser.parse_args(argv)

    records = load_source("gsm8k", split="train", data_dir=args.data_dir)[:args.problems]
    server = serve({r.question: r.solution or "" for r in records}, args.latency)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    print(f"{len(records)} GSM8K train problems, 1 sample each, {args.latency * 1000:.0f} ms per request")
    header = ("concurrency", "cold s", "problems/s", "re-run s", "ran", "verified", "kept")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (11, 7, 10, 8, 5, 8, 5))))
    with tempfile.TemporaryDirectory() as tmp:
        problems = Path(tmp) / "problems.jsonl"
        write_records(records, problems)
        for concurrency in args.concurrency:
            config = SynthesisConfig(teacher=TeacherConfig(base_url=url, model="oracle", concurrency=concurrency),
                                     input=[str(problems)], samples=1, chunk=64, output=f"{tmp}/out{concurrency}.jsonl",
                                     verifier_workers=args.verifier_workers)
            start = time.perf_counter()
            summary = synthesize(config, quiet=True)
            cold = time.perf_counter() - start
            start = time.perf_counter()
            again = synthesize(config, quiet=True)
            warm = time.perf_counter() - start
            assert again["asked"] == 0 and again["kept"] == summary["kept"]
            print(f"{concurrency:>11} {cold:>7.1f} {len(records) / cold:>10.1f} {warm:>8.1f} {summary['ran']:>5} "
                  f"{summary['verified']:>8} {summary['kept']:>5}")
    server.shutdown()


if __name__ == "__main__":
    main()
