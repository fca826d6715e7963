"""The embedded default task: multi-step arithmetic word problems with verifiable answers.

A problem is a start quantity followed by 1..N operations ("buys 4 more", "gives 3 away",
"doubles"). The exact answer is known, so rewards need no model; the programmatic teacher writes
the step-by-step reasoning ("7 + 4 = 11. 11 - 3 = 8.") before the final `\\boxed{}` answer.
Everything is a pure function of a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = ["Ava", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gia", "Hal", "Ivy", "Jon", "Kai", "Lea", "Max", "Nia", "Omar", "Pia"]
ITEMS = ["apples", "books", "coins", "cards", "pens", "shells", "stamps", "marbles", "eggs", "cups"]
ADD = ["buys {n} more {item}", "finds {n} more {item}", "gets {n} more {item}", "is given {n} more {item}"]
SUB = ["gives {n} {item} to {other}", "loses {n} {item}", "sells {n} {item}", "uses {n} {item}"]
MUL = ["doubles the number of {item}", "triples the number of {item}"]
_MUL_FACTOR = {0: 2, 1: 3}


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str
    steps: tuple[str, ...]  # "a + b = c" lines

    @property
    def n_ops(self) -> int:
        return len(self.steps)


def make_problem(rng: random.Random, n_ops: int, max_start: int, max_operand: int, uid: str) -> Problem:
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    value = rng.randint(2, max_start)
    sentences = [f"{name} has {value} {item}."]
    steps = []
    for i in range(n_ops):
        kind = rng.choices(["add", "sub", "mul"], weights=[4, 4, 1 if value <= 12 else 0])[0]
        if kind == "sub" and value <= 1:
            kind = "add"
        if kind == "add":
            n = rng.randint(1, max_operand)
            phrase = rng.choice(ADD).format(n=n, item=item)
            new, step = value + n, f"{value} + {n} = {value + n}"
        elif kind == "sub":
            n = rng.randint(1, min(max_operand, value - 1))
            phrase = rng.choice(SUB).format(n=n, item=item, other=other)
            new, step = value - n, f"{value} - {n} = {value - n}"
        else:
            k = rng.randrange(2)
            phrase = MUL[k].format(item=item)
            f = _MUL_FACTOR[k]
            new, step = value * f, f"{value} * {f} = {value * f}"
        lead = "Then" if i else "First,"
        sentences.append(f"{lead} {name} {phrase}.")
        steps.append(step)
        value = new
    sentences.append(f"How many {item} does {name} have now?")
    return Problem(id=uid, problem=" ".join(sentences), answer=str(value), steps=tuple(steps))


def generate(n: int, seed: int, min_ops: int, max_ops: int, max_start: int, max_operand: int,
             prefix: str = "syn") -> list[Problem]:
    rng = random.Random(seed)
    return [make_problem(rng, rng.randint(min_ops, max_ops), max_start, max_operand, f"{prefix}-{seed}-{i}") for i in range(n)]


def reasoning(p: Problem) -> str:
    """The programmatic teacher's step-by-step trace, ending in the boxed answer."""
    return " ".join(s + "." for s in p.steps) + f" The answer is \\boxed{{{p.answer}}}."


def direct(p: Problem) -> str:
    """An answer with no reasoning (the base model's pre-training style)."""
    return f"The answer is \\boxed{{{p.answer}}}."
