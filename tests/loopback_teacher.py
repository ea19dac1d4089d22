"""A chat-completions teacher on 127.0.0.1 for the synthetic arithmetic questions (`arithmetic__add_small`,
`arithmetic__add_or_sub`, `arithmetic__mul`): it reads the expression off the question and answers with a
program. Choice k of a request seeded s is wrong (off by one) when (s + k) % 3 == 2, verbose (comments, prints,
one variable per operand) when (s + k) % 3 == 1, else concise; a revision turn is always answered concisely and
correctly. So synthesis keeps some and drops some, revision has failures to repair, and DPO finds both pair kinds.

    python tests/loopback_teacher.py --port 8765      # then JAXMATH_TEACHER_BASE_URL=http://127.0.0.1:8765/v1
"""
from __future__ import annotations

import argparse
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NUMBER = r"\(?-?\d+(?:\.\d+)?\)?"
PHRASES = [  # (question pattern, expression template over its groups)
    (re.compile(rf"^Add ({NUMBER}) and ({NUMBER})\.$"), "{0} + {1}"),
    (re.compile(rf"^Subtract ({NUMBER}) from ({NUMBER})\.$"), "{1} - {0}"),
    (re.compile(rf"^Multiply ({NUMBER}) and ({NUMBER})\.$"), "{0} * {1}"),
    (re.compile(rf"^What is ({NUMBER}) times ({NUMBER})\?$"), "{0} * {1}"),
    (re.compile(rf"^(?:Calculate|What is) ({NUMBER}) ([-+*]) ({NUMBER})[.?]$"), "{0} {1} {2}"),
]


def expression(question: str) -> tuple[str, str, str] | None:
    """(left operand, operator, right operand) of a synthetic arithmetic question, or None."""
    for pattern, template in PHRASES:
        match = pattern.match(question.strip())
        if match:
            left, op, right = template.format(*match.groups()).split(" ")
            return left, op, right
    return None


def program(question: str, style: str) -> str:
    """A reply in the `pot` format: `concise`, `verbose` or `wrong`; prose when the question is not arithmetic."""
    parts = expression(question)
    if parts is None:
        return "I cannot turn this question into a program."
    left, op, right = parts
    if style == "verbose":
        code = (f"# the first operand\na = {left}\n# the second operand\nb = {right}\nresult = a {op} b\n"
                f"print('result:', result)\nanswer = result")
    else:
        code = f"answer = {left} {op} {right}" + (" + 1" if style == "wrong" else "")
    return f"```python\n{code}\n```"


def reply_style(seed: int, choice: int) -> str:
    return ("concise", "verbose", "wrong")[(seed + choice) % 3]


def serve(port: int = 0) -> ThreadingHTTPServer:
    """Start the teacher on 127.0.0.1:`port` (0: any free port) in a daemon thread; its URL is `url(server)`."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            messages = body["messages"]
            revision = len(messages) > 2
            texts = [program(messages[1]["content"], "concise" if revision else reply_style(body["seed"], i))
                     for i in range(body["n"])]
            data = json.dumps({"choices": [{"index": i, "message": {"role": "assistant", "content": text}}
                                           for i, text in enumerate(texts)]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    server = serve(parser.parse_args().port)
    print(f"loopback teacher at {url(server)} (model name: any)", flush=True)
    threading.Event().wait()
