"""Answer extraction and verification: equivalent answers verify, wrong ones don't, nothing hangs."""

from __future__ import annotations

import json
import threading

import pytest
from conftest import SHARED_DATA

from bridgerl.rewards import is_correct, reward
from bridgerl.rewards.extract import clean_answer, extract_answer, last_boxed
from bridgerl.rewards.guard import GuardedCall
from bridgerl.rewards.math_answer import verify_strings

BENCHMARKS = ["math500", "minerva_math", "olympiadbench", "aime24", "amc23"]


@pytest.mark.parametrize("text, expected", [
    (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
    (r"\boxed{1} then later \boxed{2}", "2"),
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"\fbox{42}", "42"),
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
    (r"\boxed{\text{(C) } \{x \mid x>0\}}", r"\text{(C) } \{x \mid x>0\}"),
    (r"\boxed{7} and an unclosed \boxed{8", "7"),
    (r"the answer is \boxed 5", "5"),
    ("We get 3 apples, so the final answer is 12.", "12"),
    ("Answer: $-\\frac{3}{4}$", "-\\frac{3}{4}"),
    ("first 3 then 4,000 total", "4,000"),
    ("no numbers here", None),
    ("", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_last_boxed_none_without_box():
    assert last_boxed("x = 3") is None


@pytest.mark.parametrize("raw, cleaned", [("$(-\\infty, 0) \\cup\\{1\\}$.", "(-\\infty, 0) \\cup\\{1\\}"),
                                          (" 1,234 ", "1234"), ("\\$5", "\\$5"), ("$221,$8$", "221,8")])
def test_clean_answer(raw, cleaned):
    assert clean_answer(raw) == cleaned


EQUIVALENT = [
    # fractions in several notations
    (r"\frac{1}{2}", "1/2"), (r"\frac12", "0.5"), (r"\dfrac{3}{4}", r"\tfrac{3}{4}"), ("0.5", r"\frac{1}{2}"),
    (r"\frac{-3}{4}", r"-\frac34"),
    # decimals and negative numbers
    ("2.50", "2.5"), ("-7", "-7.0"), (r"-\frac{3}{4}", "-0.75"), ("1,234", "1234"),
    # intervals, sets, tuples
    ("(1, 2]", "(1,2]"), (r"(-\infty,0)\cup\{1\}", r"(-\infty, 0) \cup \{1\}"), (r"\{1,2\}", r"\{2,1\}"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\pi/2)"), ("2, 3", "3, 2"),
    # units, \text{}, degrees
    ("5", r"5 \text{ cm}"), (r"5\text{ cm}", "5"), (r"5 \mbox{ cm}^2", "5"), (r"\text{Evelyn}", "Evelyn"),
    (r"30^\circ", "30"), ("30", r"30^{\circ}"),
    # expressions
    (r"\sqrt{2}/2", r"\frac{\sqrt2}{2}"), ("x^2+2x+1", "(x+1)^2"), (r"\pi/2", r"\frac{\pi}{2}"), ("x=3", "3"),
]
DIFFERENT = [
    (r"\frac{1}{2}", r"\frac{1}{3}"), ("0.5", "0.51"), ("-3", "3"), (r"-\frac{3}{4}", "0.75"), ("(1,2]", "[1,2]"),
    ("(1,2)", "(2,1)"), (r"\{1,2\}", r"\{1,3\}"), (r"30^\circ", "60"), (r"5\text{ cm}", "6"), ("x^2+1", "(x+1)^2"),
    ("12", ""),
]


@pytest.mark.parametrize("gold, pred", EQUIVALENT)
def test_equivalent_answers_verify(gold, pred):
    assert is_correct("math", f"Thus the answer is $\\boxed{{{pred}}}$.", gold)
    assert verify_strings(gold, pred, shortcut=False)


@pytest.mark.parametrize("gold, pred", DIFFERENT)
def test_wrong_answers_do_not_verify(gold, pred):
    assert not is_correct("math", f"Thus the answer is $\\boxed{{{pred}}}$.", gold)


def test_output_without_answer_is_wrong():
    assert not is_correct("math", "I do not know.", "3")
    assert reward("math", r"\boxed{3}", "3", correct=1.0, wrong=-1.0) == 1.0
    assert reward("math", r"\boxed{4}", "3", correct=1.0, wrong=-1.0) == -1.0


def test_synthetic_checker_and_unknown_source():
    assert is_correct("synthetic", r"... \boxed{1,024}", "1024")
    assert not is_correct("synthetic", r"\boxed{1023}", "1024")
    with pytest.raises(ValueError, match="data_source = 'nope'"):
        is_correct("nope", "1", "1")


@pytest.mark.parametrize("name", BENCHMARKS)
def test_gold_answers_verify_against_themselves_with_math_verify(name):
    """math-verify itself (no string shortcut) parses every gold answer of the five benchmarks."""
    rows = [json.loads(x) for x in (SHARED_DATA / "benchmarks" / f"{name}.jsonl").read_text().splitlines() if x.strip()]
    bad = [r["id"] for r in rows if not verify_strings(r["answer"], extract_answer(f"\\boxed{{{r['answer']}}}"),
                                                       shortcut=False)]
    assert not bad, f"{name}: gold answers that do not verify against themselves: {bad[:10]}"


PATHOLOGICAL = r"so the answer is $\boxed{(x+1)^{100000}}$"


@pytest.mark.timeout(120)
def test_pathological_answer_is_wrong_not_a_hang_in_a_thread():
    """math-verify's signal-based timeout does not work off the main thread; the guard does."""
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", is_correct("math", PATHOLOGICAL, "1", timeout_s=1)))
    t.start()
    t.join(90)
    assert not t.is_alive(), "verification hung"
    assert out["r"] is False


@pytest.mark.timeout(120)
def test_pathological_answer_is_wrong_in_main_thread_and_worker_survives():
    assert is_correct("math", PATHOLOGICAL, "1", timeout_s=1) is False
    assert is_correct("math", r"\boxed{\frac{2}{4}}", "0.5", timeout_s=5)


@pytest.mark.timeout(120)
def test_guard_kills_a_worker_stuck_beyond_its_timer_and_recovers():
    """A call the worker's interval timer cannot interrupt (SIGALRM blocked) is killed; the next one works."""
    stuck = GuardedCall("guard_helpers:block_alarm_and_sleep")
    try:
        assert stuck(0, timeout_s=5) == 0
        assert stuck(60, timeout_s=1) is None
        assert stuck.restarts == 1
        assert stuck(0, timeout_s=5) == 0
    finally:
        stuck.close()


@pytest.mark.parametrize("output, extracted, correct", [  # issue 24 item 2, each scoring case
    ("2", "2", True),
    ("The answer is 2", "2", True),
    ("Put the answer in \\boxed{}. The answer is 2", "2", True),  # echoed empty box skipped
    ("\\boxed{}", None, False),  # empty box is no answer (counted by no_answer_rate)
    ("\\boxed{2} then \\boxed{}", "2", True),
    ("2.2.2", None, False),  # not a number (read ".2" before)
    # SmolLM2 echoes the instruction as its "answer": the last number is read instead (was "within \\boxed{}")
    ("So 5 - 3 = 2 apples.\n\nThe final answer is within \\boxed{}.", "2", True),
    # SmolLM2 boxes the equation: its right-hand side is the answer
    ("\\boxed{5 - 3 = 2}", "5 - 3 = 2", True),
    ("\\boxed{5 - 3 = 3}", "5 - 3 = 3", False),
    ("\\boxed{x = 2}", "x = 2", True),
])
def test_synthetic_scoring_cases(output, extracted, correct):
    from bridgerl.rewards import judge
    assert judge("synthetic", output, "2") == (extracted, correct)


ADVERSARIAL = {"unclosed": "\\boxed{" * 30_000, "spaces": "answer is" + " " * 200_000 + "x",
               "nested": "\\boxed{" + "{" * 100_000 + "}" * 100_000 + "}", "answer_is": "the answer is 3 " * 15_000}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_outputs_extract_in_bounded_time(name):
    """Each ~200k-char adversarial output is extracted in a subprocess under a generous 20 s wall limit."""
    import subprocess
    import sys
    code = ("import sys; sys.path.insert(0, 'tests'); from test_rewards import ADVERSARIAL; "
            "from bridgerl.rewards.extract import extract_answer; "
            f"print(repr(extract_answer(ADVERSARIAL[{name!r}])))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
