"""Where demonstration traces come from: the four values of `demos.source`.

- embedded: the programmatic teacher of the synthetic task (re-derives the steps from the text).
- endpoint: a model behind an OpenAI-compatible chat-completions route, many requests in flight.
- hf_model: a local Hugging Face model generating with transformers (GPU if there is one).
- dataset: existing traces (hub id or local file) mapped by `demos.dataset.fields` + `response_field`.

A generating teacher gets a list of (problem row, sample index) pairs still to do and calls
`on_sample(record)` for each finished sample as soon as it exists (the stage journals it there).
A record: {id, sample, response, tokens (the teacher's count, or None), finish_reason}.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Callable

from bridgerl.config import Config, SourceSpec, redact
from bridgerl.core.io import DataError
from bridgerl.tasks import synthetic

log = logging.getLogger(__name__)
OnSample = Callable[[dict], None]


def sample_seed(seed: int, pid: str, k: int) -> int:
    """A stable per-sample seed, so a resumed run asks for exactly what the first run would have."""
    return int(hashlib.sha1(f"{seed}:{pid}:{k}".encode()).hexdigest()[:8], 16)


def messages_for(problem: str, template: str, system_prompt: str | None) -> list[dict]:
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": template.format(problem=problem)}]


# ------------------------------------------------------------------------------------------------
# embedded
# ------------------------------------------------------------------------------------------------
_OPS = r"(buys|finds|gets|is given|gives|loses|sells|uses|doubles|triples)"


def embedded_trace(row: dict) -> str:
    """The programmatic teacher: re-derive the steps of a synthetic problem from its text."""
    nums = [int(x) for x in re.findall(r"\d+", row["problem"])]
    ops = re.findall(_OPS, row["problem"])
    value, steps = nums[0], []
    operands = iter(nums[1:])
    for op in ops:
        if op in ("doubles", "triples"):
            f = 2 if op == "doubles" else 3
            steps.append(f"{value} * {f} = {value * f}")
            value *= f
        elif op in ("buys", "finds", "gets", "is given"):
            n = next(operands)
            steps.append(f"{value} + {n} = {value + n}")
            value += n
        else:
            n = next(operands)
            steps.append(f"{value} - {n} = {value - n}")
            value -= n
    p = synthetic.Problem(id=row["id"], problem=row["problem"], answer=str(value), steps=tuple(steps))
    return synthetic.reasoning(p)


class EmbeddedTeacher:
    kind = "embedded"
    journaled = False  # instant and deterministic: nothing to resume

    def settings(self) -> dict:
        return {"kind": self.kind}

    def run(self, todo: list[tuple[dict, int]], on_sample: OnSample) -> None:
        for row, k in todo:
            if row.get("data_source") != "synthetic":
                raise DataError(f"demos.source = 'embedded' only covers the synthetic task; problem {row['id']} "
                                f"is from {row.get('source')!r}: use an endpoint, hf_model or dataset source")
            on_sample({"id": row["id"], "sample": k, "response": embedded_trace(row), "tokens": None,
                       "finish_reason": "stop"})


# ------------------------------------------------------------------------------------------------
# endpoint
# ------------------------------------------------------------------------------------------------
class EndpointTeacher:
    kind = "endpoint"
    journaled = True

    def __init__(self, cfg: Config):
        from bridgerl.demos.client import ChatClient

        d, e = cfg.demos, cfg.demos.endpoint
        self.d, self.e, self.seed = d, e, cfg.seed
        key = os.environ.get(e.api_key_env) or None
        if key is None:
            log.info("no API key in $%s: sending requests without Authorization", e.api_key_env)
        self.client = ChatClient(e.base_url, e.model, key, timeout_s=e.timeout_s, max_retries=e.max_retries,
                                 backoff_s=e.backoff_s, backoff_max_s=e.backoff_max_s, extra_body=e.extra_body)

    def settings(self) -> dict:
        d = self.d
        return {"kind": self.kind, "model": self.e.model, "prompt_template": d.prompt_template,
                "system_prompt": d.system_prompt, "temperature": d.temperature, "top_p": d.top_p,
                "max_new_tokens": d.max_new_tokens, "extra_body": redact(self.e.extra_body),  # kept in the demo card
                "seed": self.seed if self.e.send_seed else None}

    def _one(self, row: dict, k: int) -> dict:
        d = self.d
        c = self.client.complete(messages_for(row["problem"], d.prompt_template, d.system_prompt),
                                 temperature=d.temperature, top_p=d.top_p, max_tokens=d.max_new_tokens,
                                 seed=sample_seed(self.seed, row["id"], k) if self.e.send_seed else None)
        return {"id": row["id"], "sample": k, "response": c.text, "tokens": c.tokens, "finish_reason": c.finish_reason}

    def run(self, todo: list[tuple[dict, int]], on_sample: OnSample) -> None:
        """At most `concurrency` requests in flight; each result is recorded by the worker that got it
        (so results still arriving while the build unwinds from a failure or a signal are kept).
        On a persistent failure no new request is sent, the ones in flight finish, then it is raised."""
        items = iter(todo)
        failure: BaseException | None = None
        lock = threading.Lock()

        def work(row: dict, k: int) -> None:
            rec = self._one(row, k)
            with lock:
                on_sample(rec)

        with ThreadPoolExecutor(self.e.concurrency, thread_name_prefix="teacher") as pool:
            pending: set = set()

            def fill() -> None:
                while failure is None and len(pending) < self.e.concurrency:
                    nxt = next(items, None)
                    if nxt is None:
                        return
                    pending.add(pool.submit(work, *nxt))

            fill()
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    if fut.exception() is not None:  # EndpointError / EndpointUnavailable / a bug
                        failure = failure or fut.exception()
                fill()
        if failure is not None:
            raise failure

    def retries(self) -> dict:
        return dict(self.client.retries)


# ------------------------------------------------------------------------------------------------
# hf_model
# ------------------------------------------------------------------------------------------------
class HFTeacher:
    kind = "hf_model"
    journaled = True

    def __init__(self, cfg: Config):
        self.cfg, self.d = cfg, cfg.demos
        self.model = self.tok = None

    def settings(self) -> dict:
        d = self.d
        return {"kind": self.kind, "model": d.hf_model, "prompt_template": d.prompt_template,
                "system_prompt": d.system_prompt, "temperature": d.temperature, "top_p": d.top_p,
                "max_new_tokens": d.max_new_tokens, "seed": self.cfg.seed}

    def _load(self) -> None:
        from bridgerl.model.loading import default_device, load_model, load_tokenizer, resolve_dtype

        device = default_device()
        self.tok = load_tokenizer(self.d.hf_model)
        self.model = load_model(self.d.hf_model, resolve_dtype(self.cfg.model.dtype, device), device=device)

    def prompt(self, problem: str) -> str:
        msgs = messages_for(problem, self.d.prompt_template, self.d.system_prompt)
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in msgs) + "\n"  # same as bridgerl.model.prompts without a template

    def run(self, todo: list[tuple[dict, int]], on_sample: OnSample) -> None:
        import torch

        from bridgerl.rollout.generation import generate

        if not todo:
            return
        if self.model is None:
            self._load()
        bs = self.d.hf_batch_size
        limit = getattr(self.model.config, "max_position_embeddings", None)
        for i in range(0, len(todo), bs):
            chunk = todo[i: i + bs]
            prompts = [self.prompt(row["problem"]) for row, _ in chunk]
            new = self.d.max_new_tokens
            if limit:  # never run past the model's context
                longest = max(len(self.tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
                new = max(1, min(new, limit - longest))
            torch.manual_seed(sample_seed(self.cfg.seed, chunk[0][0]["id"], chunk[0][1]))
            g = generate(self.model, self.tok, prompts, new, temperature=self.d.temperature, top_p=self.d.top_p,
                         batch_size=bs)
            for (row, k), text, ids, trunc in zip(chunk, g.texts, g.response_ids, g.truncated):
                on_sample({"id": row["id"], "sample": k, "response": text.strip(), "tokens": len(ids),
                           "finish_reason": "length" if trunc else "stop"})


# ------------------------------------------------------------------------------------------------
# dataset
# ------------------------------------------------------------------------------------------------
def _messages_text(value, role: str, first: bool) -> str | None:
    """The content of the first/last message of `role` in a chat list, else None."""
    if not (isinstance(value, list) and value and all(isinstance(m, dict) for m in value)):
        return None
    hits = [m.get("content") for m in value if m.get("role") == role]
    if not hits:
        return None
    text = hits[0] if first else hits[-1]
    return text if isinstance(text, str) else None


def load_traces(spec: SourceSpec, response_field: str) -> tuple[list[dict], dict[str, list[str]]]:
    """Problems {id, problem, answer, data_source} and their traces from an existing trace dataset.

    `fields.problem` may name a text column or a chat-messages column (its first user message);
    `response_field` may name a text column, a list of texts (several samples), or a chat-messages
    column (its last assistant message). Rows with the same id are several samples of one problem.
    """
    from bridgerl.data import sources

    origin = spec.path if spec.kind == "local" else f"hub:{spec.path}"
    if spec.kind == "local":
        from pathlib import Path

        raw = sources._rows_local(Path(spec.path))
    elif spec.kind == "hub":
        raw = sources._rows_hub(spec)
    else:
        raise DataError("demos.dataset.kind = 'embedded': a trace dataset is a hub id or a local file")
    f = spec.fields
    rx = re.compile(spec.answer_regex, re.S | re.M) if spec.answer_regex else None
    problems: dict[str, dict] = {}
    traces: dict[str, list[str]] = {}
    for i, r in enumerate(raw, 1):
        where = f"{origin}: record {i}"
        missing = [k for k in (f.problem, f.answer, response_field) + ((f.id,) if f.id else ()) if k not in r]
        if missing:
            raise DataError(f"{where}: missing field(s) {', '.join(missing)} (demos.dataset.fields "
                            f"{f.model_dump()}, demos.response_field={response_field!r})")
        problem = _messages_text(r[f.problem], "user", first=True)
        problem = problem if problem is not None else sources._cell(r[f.problem])
        answer = sources._cell(r[f.answer])
        if rx:
            m = rx.search(answer)
            if not m:
                raise DataError(f"{where}: answer does not match answer_regex {spec.answer_regex!r}")
            answer = m.group(1).strip()
        value = r[response_field]
        resp = _messages_text(value, "assistant", first=False)
        if resp is not None:
            responses = [resp]
        elif isinstance(value, str):
            responses = [value]
        elif isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value):
            responses = list(value)
        else:
            raise DataError(f"{where}: field {response_field!r} is neither text, a list of texts nor chat "
                            f"messages with an assistant turn (got {type(value).__name__})")
        pid = sources._cell(r[f.id]) if f.id else sources._hash_id(problem)
        if pid not in problems:
            problems[pid] = {"id": pid, "problem": problem, "answer": answer, "data_source": spec.data_source,
                             "source": spec.name}
            traces[pid] = []
        traces[pid].extend(x.strip() for x in responses)
    return list(problems.values()), traces


def make_teacher(cfg: Config):
    kind = cfg.demos.source
    if kind == "embedded":
        return EmbeddedTeacher()
    if kind == "endpoint":
        return EndpointTeacher(cfg)
    if kind == "hf_model":
        return HFTeacher(cfg)
    raise ValueError(f"demos.source = {kind!r}: not a generating teacher")
