"""Bad input a new user gives: each is one line on stderr naming the file/line or key, exit 2, no
traceback, and the command writes nothing (issue 15)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FAST, REPO, path_overrides, run_cli


def _bad_files(root: Path) -> dict[str, Path]:
    files = {
        "binary.jsonl": b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR',
        "latin1.csv": "id,problem,answer\n1,caf\xe9 has 2 apples,2\n".encode("latin-1"),
        "ragged.csv": b"id,problem,answer\n1,Ava has 2 apples,2\n2,Bo has 3,pens,3\n",
        "truncated.json": b'[{"id": 1, "problem": "Ava has 2 apples", "answer": "2"},\n {"id": 2, "problem": ',
        "empty.jsonl": b"\n",
        "nullanswer.jsonl": b'{"id": 1, "problem": "Ava has 2 apples", "answer": "2"}\n'
                            b'{"id": 2, "problem": "Bo has 3 pens", "answer": null}\n',
        "long.jsonl": b'{"id": 1, "problem": "Ava has 2 apples' + b" and 2 apples" * 20 + b'", "answer": "42"}\n',
    }
    out = {}
    for name, data in files.items():
        (root / name).write_bytes(data)
        out[name.split(".")[0]] = root / name
    return out


def _source(path: Path) -> str:
    return f"data.rl_sources=[{{{{name: mine, kind: local, path: {path}}}}}]"  # braces doubled for str.format


CASES = {
    # id: (command and its arguments, extra -S overrides, the line's expected text)
    "predictions not UTF-8": (["evaluate", "--predictions", "{binary}", "--benchmark", "synthetic"], [],
                              "{binary}:1: not UTF-8 text"),
    "local source not UTF-8": (["prepare"], [_source(Path("{latin1}"))], "{latin1}:2: not UTF-8 text"),
    "malformed CSV": (["prepare"], [_source(Path("{ragged}"))],
                      "{ragged}:3: expected 3 comma-separated fields as in the header (id, problem, answer)"),
    "malformed JSON source": (["prepare"], [_source(Path("{truncated}"))], "{truncated}:2: not valid JSON"),
    # prepare's input limits (issue 27)
    "empty RL source": (["prepare"], [_source(Path("{empty}"))], "{empty}: no records (data.rl_sources.0 is empty)"),
    "empty evaluation source": (["prepare"], ["eval.benchmarks=[mine]", "eval.sources={{mine: {{path: {empty}}}}}"],
                                "{empty}: no records (eval.benchmarks[mine] is empty)"),
    "null answer": (["prepare"], [_source(Path("{nullanswer}"))], "{nullanswer}:2: answer ('answer') is null"),
    "problem over max_problem_chars": (["prepare"], [_source(Path("{long}")), "data.max_problem_chars=100"],
                                       "{long}:1: problem ('problem') is 276 characters, over the limit "
                                       "data.max_problem_chars = 100"),
    "compare --seeds a": (["compare", "--seeds", "a"], [], "--seeds 'a': expected comma-separated integers"),
    "compare --methods bridgee": (["compare", "--methods", "bridge,bridgee"], [], "unknown method(s) 'bridgee'"),
    "compare --sweep unknown key": (["compare", "--sweep", "train.bridge.lamda=0,1"], [],
                                    "--sweep train.bridge.lamda: no such configuration key"),
    "compare --sweep invalid value": (["compare", "--sweep", "train.bridge.lam=0.5,2"], [],
                                      "--sweep train.bridge.lam=2: invalid"),
    "compare --sweep unknown method": (["compare", "--sweep", "brige:train.lora.r=4"], [],
                                       "unknown method 'brige'"),
    "compare --report-only without results": (["compare", "--report-only", "--out", "{root}/nothing"], [],
                                              "{root}/nothing/results.json: not found"),
    "train before init-model": (["train"], ["model.out_dir={root}/models/none"],
                                "model.out_dir = '{root}/models/none': no base model there"),
    "LoRA target that does not exist": (["train"], ["train.method=bridge", "train.lora.target_modules=[q_proj, qkv]"],
                                        "train.lora.target_modules: no module named 'qkv' in"),
    "prompt_batch larger than the data": (["train"], ["train.prompt_batch=1000"],
                                          "train.prompt_batch = 1000 is larger than the RL training set"),
    "changed config on --resume": (["train", "--resume"], ["train.lr_theta=0.5"],
                                   ("train --resume: {root}/checkpoints/train/step-000001/state.pt was written by a "
                                    "different configuration")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line(project, case):
    from bridgerl.train import checkpoint

    args, extra, expected = CASES[case]
    files = {k: str(v) for k, v in _bad_files(project).items()} | {"root": str(project)}
    fill = lambda s: s.format(**files)
    checkpoint.save(project / "checkpoints" / "train", 1, {"step": 1}, "an-older-configuration", 1)
    before = _files(project)
    overrides = FAST + path_overrides(project) + [fill(x) for x in extra]
    p = run_cli(*[fill(a) for a in args], "-P", str(REPO / "params.yaml"), *[a for o in overrides for a in ("-S", o)],
                cwd=project, check=False)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = [x for x in p.stderr.strip().splitlines() if "%|" not in x]  # (progress bars aside)
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith(f"bridgerl {args[0]}: error: ") and fill(expected) in lines[0], lines[0]
    assert p.stdout == ""
    assert _files(project) == before, "a refused command wrote something"


def _files(root: Path) -> dict[str, int]:
    """Every file (lock files aside: taking a lock is not writing an output) with its mtime."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and not p.name.endswith(".bridgerl.lock")}
