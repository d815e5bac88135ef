"""Progress and parallelism: the progress callback type, and one function over many cases in
worker processes when asked, with a progress bar."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from typing import TypeVar

from tqdm import tqdm

#: The one progress callback of lvtl (named ``say`` wherever it is taken): one line of text.
Say = Callable[[str], None]

J = TypeVar("J")
R = TypeVar("R")


def map_cases(fn: Callable[[J], R], jobs: Sequence[J], *, workers: int = 1, desc: str = "",
              progress: bool = False) -> list[R]:
    """``[fn(job) for job in jobs]`` in order; ``workers > 1`` uses that many processes.

    ``fn`` must be a module-level function that reports its own failures in its result, so one
    bad case never stops the others.
    """
    results: list[R] = []
    with tqdm(total=len(jobs), desc=desc, unit="case", disable=not progress) as bar:
        if workers > 1 and len(jobs) > 1:
            with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
                for r in pool.imap(fn, jobs):
                    results.append(r)
                    bar.update()
        else:
            for job in jobs:
                results.append(fn(job))
                bar.update()
    return results
