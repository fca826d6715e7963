"""The reward of a rollout: weighted terms from the configuration (`rewards.terms`), built-in or the user's own.

    reward(rollout) = sum over the terms that apply to its data source of  weight * value

A term's function is a built-in (`BUILTINS`: `by_data_source`, today's verifier chosen by the record's
`data_source`; `math`; `synthetic`; `boxed`, a format check that a final non-empty `\\boxed{}` exists) or
the user's: `package.module:function` or `path/to/file.py:function`, in one of two signatures, told by its
first parameter's name or declared with `batched`:
    per item  fn(output: str, answer: str, row: dict) -> float | bool
    batched   fn(outputs: list[str], answers: list[str], rows: list[dict]) -> list[float | bool]
(`row` is the whole record: id, problem, answer, data_source and any other column of the source.)

User functions run in worker processes (`guard.GuardedCall`, `rewards.workers` of them per term, called
concurrently; a batched term's batch is split among them), each call under the term's timeout. A call that
raises, runs out of time, returns a non-number (or a batch of the wrong length) gives 0 to the rollouts
it covers and counts one failure per rollout: the run never dies of a reward. Built-ins run here.

One term per data source is its *correctness* term (`correctness: true`; one that lists the source beats
a catch-all with `data_sources: null`). Its verdict is the answer's correctness everywhere (accuracy in
training and `bridgerl evaluate`, which demonstrations are kept); True/False become
`train.grpo.reward_correct` / `reward_wrong`, a number v is graded credit between them (correct at v >= 1).
Metrics per step: `reward/<name>` (the mean raw value over the rollouts it applies to) and
`reward_failures/<name>`.
"""

from __future__ import annotations

import inspect
import logging
import math
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from bridgerl.rewards import is_correct
from bridgerl.rewards.extract import extract_answer, last_boxed
from bridgerl.rewards.refs import TermError, load_ref

log = logging.getLogger(__name__)

BATCHED_FIRST = ("outputs", "completions", "responses", "texts")  # a batched function's first parameter
ITEM_FIRST = ("output", "completion", "response", "text")


def data_source(row: dict) -> str:
    """A record's data source ('math' when it has none, as benchmarks.load tags them)."""
    return row.get("data_source") or "math"


# built-ins take the term's budget as a keyword (user functions get theirs from the worker's timer)
def _by_data_source(output: str, answer: str, row: dict, timeout_s: float = 5.0) -> bool:
    return is_correct(data_source(row), output, answer, timeout_s)


def _math(output: str, answer: str, row: dict, timeout_s: float = 5.0) -> bool:
    return is_correct("math", output, answer, timeout_s)


def _synthetic(output: str, answer: str, row: dict, timeout_s: float = 5.0) -> bool:
    return is_correct("synthetic", output, answer)


def _boxed(output: str, answer: str, row: dict, timeout_s: float = 5.0) -> bool:
    return last_boxed(output or "") is not None


BUILTINS: dict[str, Callable] = {"by_data_source": _by_data_source, "math": _math, "synthetic": _synthetic,
                                 "boxed": _boxed}


def load(ref: str, base: Path | None = None) -> Callable:
    """The function a term names: a built-in (`BUILTINS`), else a user's reference (`refs.load_ref`)."""
    if ref in BUILTINS:
        return BUILTINS[ref]
    return load_ref(ref, base, tuple(BUILTINS))


def is_batched(fn: Callable, declared: bool | None) -> bool:
    """Whether `fn` takes whole batches: as declared, else by its first parameter's name; it must accept three
    positional arguments either way."""
    try:
        sig = inspect.signature(fn)
        sig.bind(None, None, None)
    except TypeError as e:
        raise TermError(f"must take (output, answer, row) or (outputs, answers, rows): {e}") from e
    except ValueError:  # no signature (a builtin): trust the declaration
        return bool(declared)
    if declared is not None:
        return declared
    first = next(iter(sig.parameters), "")
    if first in BATCHED_FIRST:
        return True
    if first in ITEM_FIRST or fn in BUILTINS.values():
        return False
    raise TermError(f"cannot tell the signature from its first parameter {first!r}: name it output "
                    "(per item) or outputs (batched), or set batched: true/false")


@dataclass
class Scores:
    """Scores of a batch of rollouts (one entry per rollout, in order)."""

    reward: list[float]
    correct: list[bool]
    values: dict[str, list[float | None]]  # per term: its raw value, None where it does not apply
    failures: dict[str, int]
    errors: dict[str, list[str]] = field(default_factory=dict)  # per term: the first few reasons

    def metrics(self) -> dict[str, float]:
        """Per term: the sum and count of its values and its failures (the same keys on every rank, summed across
        ranks; `finish_metrics` turns them into the mean)."""
        out: dict[str, float] = {}
        for name, vals in self.values.items():
            got = [v for v in vals if v is not None]
            out[f"reward_sum/{name}"], out[f"reward_n/{name}"] = float(sum(got)), float(len(got))
            out[f"reward_failures/{name}"] = float(self.failures.get(name, 0))
        return out


def finish_metrics(m: dict) -> dict:
    """reward_sum/<term> and reward_n/<term> (summed over ranks) become reward/<term>, the mean value over the
    rollouts it applied to (absent when it applied to none)."""
    for key in [k for k in m if k.startswith("reward_sum/")]:
        name = key.removeprefix("reward_sum/")
        s, n = m.pop(key), m.pop(f"reward_n/{name}", 0.0)
        if n:
            m[f"reward/{name}"] = s / n
    return m


class _Term:
    def __init__(self, spec, index: int, default_timeout: float, workers: int):
        self.spec, self.key = spec, f"rewards.terms.{index}"
        self.name, self.weight = spec.name, float(spec.weight)
        self.timeout_s = float(spec.timeout_s or default_timeout)
        self.builtin = spec.function in BUILTINS
        self.fn = load(spec.function)
        self.batched = is_batched(self.fn, spec.batched)
        self.n_workers = workers
        self._pool: queue.Queue | None = None
        self._pool_lock = threading.Lock()

    def applies(self, ds: str) -> bool:
        return self.spec.data_sources is None or ds in self.spec.data_sources

    def _workers(self) -> queue.Queue:
        """The term's worker pool, made once (the scoring threads ask for it at the same time)."""
        with self._pool_lock:
            if self._pool is None:
                from bridgerl.rewards.guard import GuardedCall

                ref = self.spec.function
                target, name = self.spec.target()
                if target.endswith(".py"):  # the worker may start elsewhere: give it the absolute path
                    ref = f"{Path(target).resolve()}:{name}"
                pool: queue.Queue = queue.Queue()
                for _ in range(self.n_workers):
                    pool.put(GuardedCall(ref))
                self._pool = pool
            return self._pool

    def _guarded(self, *args) -> tuple[object, str | None]:
        pool = self._workers()
        worker = pool.get()
        try:
            return worker.call(*args, timeout_s=self.timeout_s)
        except RuntimeError as e:  # the worker did not start (it is retried on the next call)
            return None, str(e)
        finally:
            pool.put(worker)

    def calls(self, outputs: list[str], answers: list[str], rows: list[dict]) -> list[tuple[object, str | None]]:
        """(result, error) per item."""
        n = len(outputs)
        if not n:
            return []
        if self.builtin:
            out = []
            for o, a, r in zip(outputs, answers, rows):
                try:
                    out.append((self.fn(o, a, r, timeout_s=self.timeout_s), None))
                except Exception as e:  # e.g. a data source no verifier knows
                    out.append((None, f"raised {type(e).__name__}: {e}"))
            return out
        if not self.batched:
            with ThreadPoolExecutor(max_workers=min(self.n_workers, n)) as ex:
                return list(ex.map(lambda x: self._guarded(*x), zip(outputs, answers, rows)))
        k = min(self.n_workers, n)
        bounds = [(i * n // k, (i + 1) * n // k) for i in range(k)]

        def chunk(b: tuple[int, int]) -> list[tuple[object, str | None]]:
            lo, hi = b
            res, err = self._guarded(outputs[lo:hi], answers[lo:hi], rows[lo:hi])
            if err is None and not (isinstance(res, list) and len(res) == hi - lo):
                got = f"a list of {len(res)}" if isinstance(res, list) else type(res).__name__
                err = f"returned {got} for a batch of {hi - lo}"
            return [(x, None) for x in res] if err is None else [(None, err)] * (hi - lo)

        with ThreadPoolExecutor(max_workers=k) as ex:
            return [x for part in ex.map(chunk, bounds) for x in part]

    def close(self) -> None:
        if self._pool is not None:
            while not self._pool.empty():
                self._pool.get().close()


def _number(x: object) -> float | None:
    if isinstance(x, bool):
        return 1.0 if x else 0.0
    if isinstance(x, (int, float)) and math.isfinite(x):
        return float(x)
    return None


class Scorer:
    """Scores rollouts with the configured terms (`rewards`) and tells correctness (module docstring)."""

    def __init__(self, rewards_cfg, reward_correct: float = 1.0, reward_wrong: float = 0.0):
        self.terms: list[_Term] = []
        for i, spec in enumerate(rewards_cfg.terms):
            try:
                self.terms.append(_Term(spec, i, rewards_cfg.timeout_s, rewards_cfg.workers))
            except TermError as e:
                from bridgerl.config import ConfigError

                raise ConfigError(f"rewards.terms.{i}.function = {spec.function!r}: {e}") from None
        self.hi, self.lo = float(reward_correct), float(reward_wrong)

    @classmethod
    def from_config(cls, cfg) -> "Scorer":
        """The trainer's: rewards.terms, with train.grpo's correct/wrong values."""
        return cls(cfg.rewards, cfg.train.grpo.reward_correct, cfg.train.grpo.reward_wrong)

    @classmethod
    def judging(cls, cfg) -> "Scorer":
        """For correctness only (evaluate, build-demos): reads rewards alone (their stage contracts)."""
        return cls(cfg.rewards)

    def judge_term(self, ds: str) -> _Term | None:
        """The correctness term of data source `ds` (one that lists it, else a catch-all)."""
        listed = [t for t in self.terms if t.spec.correctness and t.spec.data_sources and ds in t.spec.data_sources]
        if listed:
            return listed[0]
        return next((t for t in self.terms if t.spec.correctness and t.spec.data_sources is None), None)

    def _applies(self, t: _Term, ds: str) -> bool:
        if t.spec.correctness and t.spec.data_sources is None:
            return self.judge_term(ds) is t  # a catch-all judge steps aside where a source has its own
        return t.applies(ds)

    def check_sources(self, rows: Sequence[dict], where: str) -> None:
        """The data source of every record in `where` has a correctness term (else a ConfigError before any
        work)."""
        from bridgerl.config import ConfigError
        from bridgerl.rewards import known_sources

        for ds in sorted({data_source(r) for r in rows}):
            t = self.judge_term(ds)
            if t is None:
                raise ConfigError(f"rewards.terms: data source {ds!r} (in {where}) has no correctness term "
                                  "(a term with correctness: true whose data_sources lists it or is null)")
            if t.spec.function == "by_data_source" and ds not in known_sources():
                raise ConfigError(f"{t.key}: data source {ds!r} (in {where}) has no built-in verifier "
                                  f"(known: {', '.join(known_sources())}); give it a term of its own")

    def score(self, rows: Sequence[dict], outputs: Sequence[str]) -> Scores:
        n = len(outputs)
        reward = [0.0] * n
        correct = [False] * n
        values: dict[str, list[float | None]] = {}
        failures: dict[str, int] = {}
        errors: dict[str, list[str]] = {}
        dss = [data_source(r) for r in rows]
        for t in self.terms:
            idx = [i for i in range(n) if self._applies(t, dss[i])]
            vals: list[float | None] = [None] * n
            res = t.calls([outputs[i] for i in idx], [str(rows[i]["answer"]) for i in idx], [rows[i] for i in idx])
            fails = 0
            for i, (x, err) in zip(idx, res):
                v = _number(x) if err is None else None
                if v is None:
                    fails += 1
                    why = err or f"returned {x!r} ({type(x).__name__}), not a number"
                    if len(errors.setdefault(t.name, [])) < 3:
                        errors[t.name].append(why)
                    v = 0.0
                vals[i] = v
                if t.spec.correctness:
                    reward[i] += t.weight * (self.lo + v * (self.hi - self.lo))
                    correct[i] = v >= 1.0
                else:
                    reward[i] += t.weight * v
            values[t.name], failures[t.name] = vals, fails
            if fails:
                log.warning("reward term %s: %d of %d calls failed (scored 0), e.g. %s", t.name, fails, len(idx),
                            errors[t.name][0])
        return Scores(reward, correct, values, failures, errors)

    def judge(self, row: dict, output: str) -> tuple[str | None, bool]:
        """(the extracted final answer, whether the correctness term of the row's data source accepts it)."""
        return extract_answer(output or ""), self.judge_many([row], [output])[0]

    def judge_many(self, rows: Sequence[dict], outputs: Sequence[str]) -> list[bool]:
        """Correctness of each (row, output) by its correctness term, batched per term (none: not correct)."""
        judges = [self.judge_term(data_source(r)) for r in rows]
        out = [False] * len(outputs)
        for t in {id(t): t for t in judges if t}.values():
            idx = [i for i, j in enumerate(judges) if j is t]
            res = t.calls([outputs[i] for i in idx], [str(rows[i]["answer"]) for i in idx], [rows[i] for i in idx])
            for i, (x, err) in zip(idx, res):
                v = _number(x) if err is None else None
                out[i] = v is not None and v >= 1.0
        return out

    def close(self) -> None:
        """Stop the user terms' worker processes (they also end with this process)."""
        for t in self.terms:
            t.close()

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

