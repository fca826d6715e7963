"""The append-only generation journal that makes `build-demos` resumable.

Each finished teacher sample is appended as one JSON line (flushed and fsynced) the moment it
arrives, so a killed build loses at most the requests that were in flight. A rerun reads the journal
and asks the teacher only for the (problem, sample) pairs it lacks. The journal file is named by a
fingerprint of the teacher settings (model, prompt, sampling, seed): changing them starts a new
journal instead of mixing samples from two teachers. It lives outside the atomic output directory
(default `<demos.out_dir>.partial/`) and is kept after success, so a rerun with the same settings
costs no requests; delete it to force fresh samples.

A record: {id, sample, problem_sha, response, tokens, finish_reason}. A record whose problem text no
longer matches (the data was re-prepared) is ignored; a torn last line (a kill mid-write) is dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from bridgerl.core.io import write_json

log = logging.getLogger(__name__)


def problem_sha(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class Journal:
    """One teacher's samples: `done` maps (id, sample) → record; `append` adds one durably."""

    def __init__(self, directory: str | Path, settings: dict):
        self.dir = Path(directory)
        self.settings = settings
        self.key = fingerprint(settings)
        self.path = self.dir / f"samples-{self.key}.jsonl"
        self.done: dict[tuple[str, int], dict] = {}
        self.dropped_torn = 0
        self._f = None

    def load(self, problems: dict[str, str]) -> dict[tuple[str, int], dict]:
        """Read earlier samples of the problems given ({id: problem text}); repair a torn tail."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self.dir / f"samples-{self.key}.settings.json", self.settings)
        if not self.path.exists():
            return self.done
        raw = self.path.read_bytes()
        end = raw.rfind(b"\n") + 1
        if end < len(raw):  # killed mid-write: cut the partial line so appends start on a fresh line
            self.dropped_torn += 1
            with open(self.path, "r+b") as f:
                f.truncate(end)
        for lineno, line in enumerate(raw[:end].splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = (str(rec["id"]), int(rec["sample"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning("%s:%d: unreadable journal line skipped", self.path, lineno)
                continue
            text = problems.get(key[0])
            if text is not None and rec.get("problem_sha") == problem_sha(text) and key not in self.done:
                self.done[key] = rec
        return self.done

    def append(self, rec: dict) -> None:
        if self._f is None:
            self._f = open(self.path, "a", encoding="utf-8")
        self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done[(str(rec["id"]), int(rec["sample"]))] = rec

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
