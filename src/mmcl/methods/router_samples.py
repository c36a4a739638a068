"""The router's training set of a step, drawn so that each answer it can give weighs alike."""

from __future__ import annotations

from typing import TypeVar

import numpy as np

T = TypeVar("T")


def balanced_set(
    fresh: list[T], pools: dict[str, list[T]], mine: str, size: int, rng: np.random.Generator
) -> list[T]:
    """`size` samples: all of `fresh` (the new task's, whose answer is `mine`), then draws from
    `pools` (each answer's earlier samples) so that every answer gets an equal share; the new
    answer's share counts `fresh` first and is never less than it. A share larger than its
    pool repeats the pool (a pool-less `mine` repeats `fresh`). An undrawn replay favours the
    newest answer, whose earlier visits' samples are in the replay too (measured on
    `scenario-20`: most misroutes went to the newest scenario)."""
    answers = dict.fromkeys([mine, *pools])
    others = [a for a in answers if a != mine]
    n_mine = max(len(fresh), size - len(others) * (size // len(answers)))
    rest = size - n_mine

    def draw(pool: list[T], k: int) -> list[T]:
        order = rng.permutation(len(pool)) if k else []
        return [pool[int(order[i % len(pool)])] for i in range(k)]

    chosen = fresh + draw(pools.get(mine) or fresh, n_mine - len(fresh))
    for i, a in enumerate(others):
        chosen += draw(pools[a], rest // len(others) + (i < rest % len(others)))
    return chosen
