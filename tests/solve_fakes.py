"""Stand-ins for a policy and a PRM with known behaviour, for strategy tests that need no model."""
import re


class ScriptedPolicy:
    """A Policy whose continuation of each prompt comes from `reply(prompt, call_index)`. One character is one
    token; a completion ends at the first stop string (tokens counted through it), at `max_new_tokens`, or
    after the reply plus one end-of-turn token."""

    def __init__(self, reply, max_new_tokens=200, stop_strings=()):
        self.reply, self.max_new_tokens, self.stop_strings = reply, max_new_tokens, tuple(stop_strings)
        self.prompts, self.calls = [], 0

    def render(self, messages):
        return "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"

    def complete(self, prompts, max_new_tokens, stop_strings=(), samples=1):
        return [[self.complete_one(p, max_new_tokens, stop_strings) for _ in range(samples)] for p in prompts]

    def complete_one(self, prompt, max_new_tokens, stop_strings):
        from jaxmath.solve.policy import Completion

        stops = (*self.stop_strings, *stop_strings)
        self.prompts.append(prompt)
        text = self.reply(prompt, self.calls)
        self.calls += 1
        cuts = sorted((text.find(s), s) for s in stops if s in text)
        if cuts and cuts[0][0] + len(cuts[0][1]) <= max_new_tokens:
            at, stop = cuts[0]
            return Completion(text[:at], at + len(stop), "stop", stop)
        if len(text) + 1 <= max_new_tokens:
            return Completion(text, len(text) + 1, "eos")
        return Completion(text[:max_new_tokens], max_new_tokens, "length")


STEP = re.compile(r"(-?\d+) ([+-]) (\d+) = (-?\d+)")


class ArithmeticPRM:
    """A PRM that knows arithmetic: a step `a + b = c` scores 0.9 when it holds and 0.1 when it does not; the
    final-answer line scores 0.9."""

    def __init__(self):
        self.calls = 0

    def score_solutions(self, questions, solutions):
        import numpy as np

        from jaxmath.prm.steps import step_texts

        self.calls += 1
        out = []
        for solution in solutions:
            scores = []
            for step in step_texts(solution):
                m = STEP.search(step)
                if m:
                    a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
                    scores.append(0.9 if (a + b if op == "+" else a - b) == c else 0.1)
                else:
                    scores.append(0.9)
            out.append(np.asarray(scores, np.float32))
        return out
