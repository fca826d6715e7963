"""`bridgerl build-demos`: verified SFT demonstrations (prompt x, reasoning r, final answer y).

Input: data.out_dir/rl_train.jsonl (or demos.dataset for existing traces) and data.out_dir/eval/*.jsonl
(decontamination). The teacher (demos.source) writes k samples per problem; a sample is kept only if
its final answer verifies; one verified trace per problem is selected (bridgerl.demos.filters).
Generated samples are journaled as they arrive (bridgerl.demos.journal), so a rerun resumes.
Output (demos.out_dir, atomic): demos.jsonl {id, problem, answer, response, data_source},
demo_card.json / demo_card.md: counts kept and dropped at each filter, teacher accuracy, lengths.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tqdm import tqdm

from bridgerl.config import Config
from bridgerl.core.io import DataError, atomic_dir, read_jsonl, write_json, write_jsonl
from bridgerl.core.stage_table import DEMO_CARD, DEMO_CARD_MD, DEMOS_FILE, EVAL_SETS, RL_TRAIN
from bridgerl.demos.filters import Decontaminator, filter_problems, filter_traces, length_stats
from bridgerl.demos.journal import Journal, problem_sha
from bridgerl.demos.teachers import load_traces, make_teacher
from bridgerl.rewards.terms import Scorer
from bridgerl.tracking.runs import stage_run

log = logging.getLogger(__name__)


class GenerationFailed(RuntimeError):
    """The teacher failed for good; finished samples are in the journal and `counts` says how far it got."""

    def __init__(self, message: str, counts: dict):
        super().__init__(message)
        self.counts = counts


def journal_dir(cfg: Config) -> Path:
    return Path(cfg.demos.journal_dir or f"{str(cfg.demos.out_dir).rstrip('/')}.partial")


def _benchmarks(cfg: Config) -> dict[str, list[str]]:
    eval_dir = EVAL_SETS.at(cfg.data.out_dir)
    if not eval_dir.is_dir():
        raise DataError(f"{eval_dir}: not found; decontamination needs the prepared benchmarks "
                        f"(run `bridgerl prepare` first)")
    return {p.stem: [r["problem"] for r in read_jsonl(p, required=("problem",))]
            for p in sorted(eval_dir.glob("*.jsonl"))}


def _generate(cfg: Config, problems: list[dict], progress: bool) -> tuple[dict[str, list[dict]], dict]:
    """k samples per problem from the teacher, resumed from and appended to the journal."""
    d = cfg.demos
    teacher = make_teacher(cfg)
    k = 1 if teacher.kind == "embedded" else d.samples_per_problem
    todo = [(row, i) for row in problems for i in range(k)]
    info: dict = {"teacher": teacher.settings(), "samples_per_problem": k}
    if not teacher.journaled:
        got: dict[tuple[str, int], dict] = {}
        teacher.run(todo, lambda rec: got.__setitem__((rec["id"], rec["sample"]), rec))
    else:
        texts = {r["id"]: r["problem"] for r in problems}
        journal = Journal(journal_dir(cfg), teacher.settings())
        got = journal.load(texts)
        todo = [(row, i) for row, i in todo if (row["id"], i) not in got]
        resumed = len(problems) * k - len(todo)
        info.update(journal=str(journal.path), resumed_samples=resumed, requested_this_run=len(todo))
        if resumed:
            log.info("resuming: %d of %d samples already in %s", resumed, len(problems) * k, journal.path)
        bar = tqdm(total=len(problems) * k, initial=resumed, desc=f"teacher ({teacher.kind})", disable=not progress)

        def on_sample(rec: dict) -> None:
            journal.append({**rec, "problem_sha": problem_sha(texts[rec["id"]])})
            bar.update()

        try:
            teacher.run(todo, on_sample)
        except Exception as e:
            from bridgerl.demos.client import EndpointError, EndpointUnavailable

            if not isinstance(e, (EndpointError, EndpointUnavailable)):
                raise
            counts = {"problems": len(problems), "samples_wanted": len(problems) * k,
                      "samples_done": len(journal.done), "resumed_samples": resumed,
                      "retries": getattr(teacher, "retries", dict)()}
            raise GenerationFailed(
                f"teacher failed: {e}\n{counts['samples_done']} of {counts['samples_wanted']} samples are done and "
                f"kept in {journal.path}; rerun `bridgerl build-demos` to continue from there.\n"
                f"counts so far: {json.dumps(counts)}", counts) from None
        finally:
            bar.close()
            journal.close()
        if hasattr(teacher, "retries"):
            info["retries"] = teacher.retries()
    samples = {r["id"]: [got[(r["id"], i)] for i in range(k)] for r in problems}
    return samples, info


def _length_fn(cfg: Config):
    """How a trace's length is counted for demos.max_tokens, and the unit's name."""
    if cfg.demos.tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(cfg.demos.tokenizer)
        return (lambda s: len(tok(s["response"], add_special_tokens=False)["input_ids"])), f"tokens ({cfg.demos.tokenizer})"
    return (lambda s: s["tokens"] if s.get("tokens") is not None else len(s["response"].split())), None


def run(cfg: Config, progress: bool = True) -> dict:
    d = cfg.demos
    data_dir = Path(cfg.data.out_dir)
    if d.source == "dataset":
        problems, traces = load_traces(d.dataset, d.response_field)
    else:
        problems = read_jsonl(data_dir / RL_TRAIN.name, required=("id", "problem", "answer", "data_source"))
    problems = problems[: d.max_problems] if d.max_problems else problems
    scorer = Scorer.judging(cfg)  # which traces are correct: the correctness terms (rewards.terms)
    scorer.check_sources(problems, "the demonstration problems")
    benchmarks = _benchmarks(cfg)
    pf = filter_problems(problems, Decontaminator(benchmarks, d.decontaminate_ngram, d.decontaminate_exempt))

    if d.source == "dataset":
        samples = {r["id"]: [{"sample": i, "response": t, "tokens": None} for i, t in enumerate(traces[r["id"]])]
                   for r in pf.kept}
        info = {"teacher": {"kind": "dataset", "path": d.dataset.path, "response_field": d.response_field}}
    else:
        samples, info = _generate(cfg, pf.kept, progress)

    length, unit = _length_fn(cfg)
    tf = filter_traces(pf.kept, samples, length=length, max_tokens=d.max_tokens, select=d.select,
                       judge=scorer.judge_many)
    if unit is None:
        reported = sum(s.get("tokens") is not None for ss in samples.values() for s in ss)
        unit = "teacher tokens" if reported and reported == tf.counts["samples"] else \
            "whitespace words" if not reported else "teacher tokens (whitespace words where not reported)"

    contaminated = sum(len(v) for v in pf.dropped_contaminated.values())
    counts = {"problems": len(problems), "dropped_duplicate": len(pf.dropped_duplicate),
              "dropped_contaminated": contaminated, "problems_for_traces": len(pf.kept), **tf.counts}
    n_samples = max(1, counts["samples"])
    card = {
        "source": d.source, **info, "select": d.select, "max_tokens": d.max_tokens, "length_unit": unit,
        "decontamination": {"ngram": d.decontaminate_ngram, "exempt": list(d.decontaminate_exempt),
                            "benchmarks": sorted(benchmarks),
                            "dropped_by_benchmark": {k: len(v) for k, v in pf.dropped_contaminated.items()},
                            "dropped_ids": pf.dropped_contaminated},
        "counts": counts,
        "teacher_accuracy": counts["correct"] / n_samples,
        "problems_solved": tf.solved / max(1, counts["problems_for_traces"]),
        "length": {"all_samples": length_stats(tf.lengths_all), "kept": length_stats(tf.lengths_kept)},
    }
    with atomic_dir(d.out_dir) as tmp:
        write_jsonl(tmp / DEMOS_FILE.name, tf.demos)
        write_json(tmp / DEMO_CARD.name, card)
        (tmp / DEMO_CARD_MD.name).write_text(card_markdown(card))
    with stage_run(cfg, "build-demos") as mlf:
        mlf.log_metrics({f"demos_{k}": v for k, v in counts.items()} | {"demos_teacher_accuracy": card["teacher_accuracy"]})
        mlf.log_artifact(str(Path(d.out_dir) / DEMO_CARD_MD.name))
        mlf.log_artifact(str(Path(d.out_dir) / DEMO_CARD.name))
    return card


def card_markdown(card: dict) -> str:
    c = card["counts"]
    rows = [
        ("input problems", c["problems"], "", c["problems"]),
        ("deduplicate problems", c["problems"], c["dropped_duplicate"], c["problems"] - c["dropped_duplicate"]),
        (f"decontaminate ({card['decontamination']['ngram']}-gram vs "
         f"{', '.join(card['decontamination']['benchmarks']) or 'none'})",
         c["problems"] - c["dropped_duplicate"], c["dropped_contaminated"], c["problems_for_traces"]),
        ("teacher samples", "", "", c["samples"]),
        ("verify final answer", c["samples"], c["dropped_wrong_answer"], c["correct"]),
        (f"length ≤ {card['max_tokens']} {card['length_unit']}", c["correct"], c["dropped_too_long"], c["eligible"]),
        (f"one trace per problem ({card['select']})", c["problems_for_traces"], c["problems_without_trace"], c["kept"]),
    ]
    la, lk = card["length"]["all_samples"], card["length"]["kept"]
    lines = [
        "# SFT demonstrations", "",
        f"Source: `{card['source']}` — teacher {json.dumps(card.get('teacher', {}))}", "",
        "| filter | in | dropped | kept |", "|---|---|---|---|",
        *[f"| {a} | {b} | {x} | {y} |" for a, b, x, y in rows], "",
        f"Teacher answer accuracy: {card['teacher_accuracy']:.3f} of samples; "
        f"problems with a verified trace: {card['problems_solved']:.3f}.", "",
        f"Length ({card['length_unit']}): all samples mean {la.get('mean', '-')}, median {la.get('median', '-')}, "
        f"p90 {la.get('p90', '-')}, max {la.get('max', '-')}; kept mean {lk.get('mean', '-')}, "
        f"median {lk.get('median', '-')}, p90 {lk.get('p90', '-')}, max {lk.get('max', '-')}.",
    ]
    if "resumed_samples" in card:
        lines += ["", f"Resumed {card['resumed_samples']} samples from the journal; requested "
                      f"{card['requested_this_run']} this run; retries {json.dumps(card.get('retries', {}))}."]
    return "\n".join(lines) + "\n"
