"""Self-evolution: rounds of sampling the current model on training questions, keeping what is correct and rated
above a threshold by the PRM, and fine-tuning on it mixed with earlier data.

Each round r (in `<stage>/round_r/`):
1. takes `questions_per_round` training questions (a seeded draw per round; all when unset);
2. generates candidates with the `strategy` (`best_of_n`: `samples` completions per question through the shared
   sampler; `STRATEGIES` is where search strategies plug in);
3. grades them (programs run in the sandbox for `pot`), scores the correct ones with the PRM, and keeps per
   question at most `keep_per_question` correct candidates scoring above `threshold`, best first, none that
   repeats a solution this stage kept before (compared on `jaxmath.data.pairs.normal_form`; a model's own
   solution that matches an earlier row is kept: it is what the model now writes);
4. mixes the kept solutions with earlier data (the `earlier` files and earlier rounds' kept solutions) so that
   earlier rows are a `replay` share of the mix, and fine-tunes the current model on it (no new solution: no
   fine-tuning, the model carries on);
5. writes samples.jsonl (every candidate, graded: what `jaxmath data pairs` reads), kept.jsonl (SFT records),
   train.jsonl (the mix), and round.json: acceptance counts (sampled, correct, above threshold, kept; in all and
   per source), the mix, the held-out accuracy and the round's model. A finished round is skipped on a rerun.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from jaxmath.config import section
from jaxmath.data.formats import PromptFormat, get_format, render_prompt
from jaxmath.data.pairs import normal_form
from jaxmath.data.readers import read_records, write_jsonl, write_records
from jaxmath.data.schema import Record
from jaxmath.inference.config import Sampling
from jaxmath.objectives.prm import STEP_AGGREGATIONS
from jaxmath.verify.answers import PROGRAM_STYLE, extract_program

ROUND_DONE = "round.json"
Candidates = list[list[tuple[str, int]]]  # per question: (completion, generated tokens)


@dataclasses.dataclass(frozen=True)
class Generator:
    """What a strategy generates with: a loaded causal LM, its tokenizer and stop ids, and the prompt format."""

    model: Any
    tokenizer: Any
    eos_ids: Sequence[int]
    fmt: PromptFormat


def best_of_n(generator: Generator, questions: Sequence[str], section: "EvolveSection",
              round_: int) -> Candidates:
    """`section.samples` sampled completions per question (the PRM picks among them afterwards)."""
    from jaxmath.inference.completions import sample_completions
    from jaxmath.inference.config import plain_text_stops, round_seed

    sampling = plain_text_stops(round_seed(section.sampling, round_), generator.tokenizer)
    prompts = [render_prompt(generator.fmt, q, generator.tokenizer) for q in questions]
    return sample_completions(generator.model, generator.tokenizer, prompts, section.samples, sampling,
                              generator.eos_ids, section.batch_size, f"evolve round {round_}")


Strategy = Callable[[Generator, Sequence[str], "EvolveSection", int], Candidates]
STRATEGIES: dict[str, Strategy] = {"best_of_n": best_of_n}


@dataclasses.dataclass(frozen=True)
class EvolveSection:
    """A self-evolution stage's settings (the stage's `rounds`, `config` and `set` give the rounds and the
    fine-tuning run); file paths may name stage directories as `{NAME}`."""

    questions: list[str]  # record files of training questions (gold answers grade the candidates)
    earlier: list[str] = dataclasses.field(default_factory=list)  # earlier SFT records mixed back in
    prm: str | None = None  # PRM model directory; None: keep every correct candidate (threshold unused)
    strategy: str = "best_of_n"
    samples: int = 4
    keep_per_question: int = 1
    threshold: float = 0.6
    aggregation: str = "min"
    replay: float = 0.5  # share of earlier rows in each round's fine-tuning mix
    questions_per_round: int | None = None
    sampling: Sampling = section(Sampling(max_new_tokens=512, temperature=0.7))
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.questions:
            raise ValueError("evolve.questions: name at least one record file of training questions")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"evolve.strategy {self.strategy!r} is not one of {sorted(STRATEGIES)}")
        if self.aggregation not in STEP_AGGREGATIONS:
            raise ValueError(f"evolve.aggregation {self.aggregation!r} is not one of {sorted(STEP_AGGREGATIONS)}")
        if self.samples < 1 or self.keep_per_question < 1 or self.batch_size < 1 or (
                self.questions_per_round is not None and self.questions_per_round < 1):
            raise ValueError("evolve.samples, keep_per_question, batch_size and questions_per_round must be >= 1")
        if not 0.0 <= self.replay < 1.0:
            raise ValueError(f"evolve.replay is the share of earlier data in a round's mix, in [0, 1); "
                             f"got {self.replay}")


@dataclasses.dataclass
class Acceptance:
    """Candidates sampled, correct, correct and above the PRM threshold, and kept (distinct, within the cap)."""

    sampled: int = 0
    correct: int = 0
    above_threshold: int = 0
    kept: int = 0


def _source(record: Record) -> str:
    return str(record.metadata.get("generator") or record.source or "input")


def round_questions(records: Sequence[Record], section: EvolveSection, round_: int) -> list[Record]:
    """The round's questions: a seeded draw of `questions_per_round` (all of them, in order, when unset)."""
    if section.questions_per_round is None or section.questions_per_round >= len(records):
        return list(records)
    return random.Random(f"evolve/{section.seed}/{round_}").sample(list(records), section.questions_per_round)


def select(records: Sequence[Record], candidates: Candidates, correct: Sequence[Sequence[bool]],
           scores: Sequence[Sequence[float | None]], section: EvolveSection, seen: set[tuple[str, str]]
           ) -> tuple[list[tuple[Record, str]], dict[str, Acceptance]]:
    """Kept (record, completion) pairs and acceptance counts per source ("all" too). A candidate is kept when it
    is correct, its score is above the threshold (None: no PRM, which passes), it is not a repeat of one in
    `seen` (updated), and fewer than `keep_per_question` of its question's are kept; best scores first."""
    counts: dict[str, Acceptance] = collections.defaultdict(Acceptance)
    kept = []
    for record, per_question, ok, score in zip(records, candidates, correct, scores):
        tallies = (counts["all"], counts[_source(record)])
        passing = [(s if s is not None else 1.0, i) for i, (good, s) in enumerate(zip(ok, score))
                   if good and (s is None or s > section.threshold)]
        for tally in tallies:
            tally.sampled += len(per_question)
            tally.correct += sum(ok)
            tally.above_threshold += len(passing)
        taken = 0
        for _, i in sorted(passing, key=lambda item: (-item[0], item[1])):
            key = (record.question, normal_form(per_question[i][0]))
            if taken == section.keep_per_question or key in seen:
                continue
            seen.add(key)
            kept.append((record, per_question[i][0]))
            taken += 1
            for tally in tallies:
                tally.kept += 1
    return kept, dict(counts)


def kept_record(record: Record, completion: str, fmt: PromptFormat, round_: int, index: int) -> Record:
    """An SFT record of a kept completion (for `pot`, its program in metadata['program'], what training reads)."""
    extra = {}
    if fmt.extraction_style == PROGRAM_STYLE:
        extra["program"] = extract_program(completion)
    return Record(id=f"{record.id}#evolve{round_}.{index}", question=record.question, answer=record.answer,
                  solution=completion, source=f"evolve:{record.source or 'input'}",
                  metadata={**record.metadata, **extra, "source_id": record.id, "round": round_})


def mix(new: Sequence[Record], earlier: Sequence[Record], replay: float, seed: int) -> list[Record]:
    """`new` plus a seeded draw of earlier rows making up a `replay` share of the result (fewer when there are
    not enough), shuffled."""
    wanted = round(len(new) * replay / (1.0 - replay)) if new else 0
    rng = random.Random(f"evolve-mix/{seed}")
    rows = list(new) + rng.sample(list(earlier), min(wanted, len(earlier)))
    rng.shuffle(rows)
    return rows


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def generate_and_grade(model_dir: str, records: Sequence[Record], section: EvolveSection, fmt: PromptFormat,
                       round_: int) -> tuple[Candidates, list[list[bool]], list[list[float | None]]]:
    """The strategy's candidates for `records` from the model in `model_dir`, each graded, and the correct ones'
    PRM scores (None where not scored)."""
    import jax

    from jaxmath.inference.loading import load_for_generation
    from jaxmath.revise import check_attempts
    from jaxmath.verify import Verifier

    model, tokenizer, eos_ids, mesh = load_for_generation(model_dir)
    with jax.set_mesh(mesh):
        candidates = STRATEGIES[section.strategy](Generator(model, tokenizer, eos_ids, fmt),
                                                  [r.question for r in records], section, round_)
    del model
    flat = [(i, text) for i, per in enumerate(candidates) for text, _ in per]
    with Verifier(workers=1) as verifier:
        attempts = check_attempts([text for _, text in flat], [records[i].answer for i, _ in flat], fmt, verifier)
    verdicts = iter(a.correct for a in attempts)
    correct = [[next(verdicts) for _ in per] for per in candidates]
    scores: list[list[float | None]] = [[None] * len(per) for per in candidates]
    if section.prm is not None:
        from jaxmath.prm.scorer import PRMScorer

        scorer = PRMScorer.from_pretrained(section.prm, fmt, mesh=mesh, batch_size=section.batch_size,
                                           progress=False)
        chosen = [(i, s) for i, ok in enumerate(correct) for s, good in enumerate(ok) if good]
        with jax.set_mesh(mesh):
            step_scores = scorer.score_solutions([records[i].question for i, _ in chosen],
                                                 [candidates[i][s][0] for i, s in chosen])
        for (i, s), value in zip(chosen, scorer.aggregate(step_scores, section.aggregation)):
            scores[i][s] = 0.0 if value is None else value  # a solution without steps cannot pass
    return candidates, correct, scores


FineTune = Callable[[Path, str, Path], dict[str, Any]]  # (train file, model dir to start from, run dir) -> summary
Heldout = Callable[[str], dict[str, Any] | None]  # model dir -> held-out figures


def run_round(round_: int, model_dir: str, section: EvolveSection, format_name: str, questions: Sequence[Record],
              earlier: list[Record], seen: set[tuple[str, str]], out: Path, finetune: FineTune,
              heldout: Heldout) -> dict[str, Any]:
    """One round in `out` (see the module docstring); returns what round.json holds. `earlier` and `seen` grow
    by the round's kept solutions."""
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    fmt = get_format(format_name)
    records = round_questions(questions, section, round_)
    candidates, correct, scores = generate_and_grade(model_dir, records, section, fmt, round_)
    write_jsonl(({"id": r.id, "question": r.question, "answer": r.answer, "source": _source(r),
                  "completions": [t for t, _ in per], "tokens": [n for _, n in per], "correct": ok,
                  "prm_scores": score} for r, per, ok, score in zip(records, candidates, correct, scores)),
                out / "samples.jsonl")
    kept, acceptance = select(records, candidates, correct, scores, section, seen)
    new = [kept_record(r, text, fmt, round_, i) for i, (r, text) in enumerate(kept)]
    write_records(new, out / "kept.jsonl")
    rows = mix(new, earlier, section.replay, section.seed + round_)
    earlier += new
    summary: dict[str, Any] = {"round": round_, "questions": len(records),
                               "acceptance": {k: dataclasses.asdict(v) for k, v in acceptance.items()},
                               "mix": {"new": len(new), "earlier": len(rows) - len(new)}}
    if new:
        write_records(rows, out / "train.jsonl")
        summary["train"] = finetune(out / "train.jsonl", model_dir, out)
        model_dir = str(out / "final_model")
    summary.update({"fine_tuned": bool(new), "model": model_dir, "heldout": heldout(model_dir),
                    "seconds": round(time.perf_counter() - start, 1)})
    _write_json(out / ROUND_DONE, summary)
    return summary


def _link(target: Path, link: Path) -> None:
    """`link` -> `target` (relative), replacing an earlier link."""
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)


def run_evolution(section: EvolveSection, rounds: int, format_name: str, start_model: Path, out: Path,
                  finetune: FineTune, heldout: Heldout, log: Callable[[str], None] = lambda m: None
                  ) -> dict[str, Any]:
    """`rounds` rounds from the model in `start_model` (a directory with final_model/ and tokenizer/); finished
    rounds are read back, not rerun. Links out/final_model and out/tokenizer to the last model and writes
    out/samples.jsonl and out/kept.jsonl (every round's); returns {"rounds": [round.json, ...]}."""
    questions = [r for path in section.questions for r in read_records(path)]
    if not questions:
        raise ValueError(f"evolve.questions {section.questions}: no usable records")
    earlier = [r for path in section.earlier for r in read_records(path)]
    seen: set[tuple[str, str]] = set()
    model_dir, summaries = str(start_model / "final_model"), []
    for round_ in range(1, rounds + 1):
        directory = out / f"round_{round_}"
        if (directory / ROUND_DONE).is_file():
            summary = json.loads((directory / ROUND_DONE).read_text())
            kept = read_records(directory / "kept.jsonl")
            earlier += kept
            seen.update((r.question, normal_form(r.solution or "")) for r in kept)
            log(f"round {round_}/{rounds}: done already, skipped")
        else:
            log(f"round {round_}/{rounds}: sampling from {model_dir}")
            summary = run_round(round_, model_dir, section, format_name, questions, earlier, seen, directory,
                                finetune, heldout)
        summaries.append(summary)
        model_dir = summary["model"]
    last = Path(model_dir)
    _link(last, out / "final_model")
    _link(last.parent / "tokenizer", out / "tokenizer")
    for name in ("samples.jsonl", "kept.jsonl"):
        write_jsonl((json.loads(line) for r in range(1, rounds + 1)
                     for line in (out / f"round_{r}" / name).read_text().splitlines() if line.strip()), out / name)
    return {"rounds": summaries}
