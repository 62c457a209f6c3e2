"""Running one function from many threads at once, each with its own database connection.

Tests that use it take `transactional_db`: each thread's connection sees only what is committed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import connection


@dataclass
class Outcome:
    """What one call did: its value, or the exception it raised."""

    index: int
    value: Any = None
    error: BaseException | None = None


def in_parallel(count: int, call: Callable[[int], Any], *, timeout: float = 120) -> list[Outcome]:
    """Run `call(i)` for i in range(count), each in a thread of its own, all released at the same moment
    (a barrier), and return their outcomes in order. Every thread closes its database connection."""
    barrier = threading.Barrier(count)
    outcomes = [Outcome(i) for i in range(count)]

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=timeout)
            outcomes[i].value = call(i)
        except BaseException as exc:  # noqa: BLE001 - the test looks at every outcome
            outcomes[i].error = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,), name=f"parallel-{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a parallel call did not finish"
    return outcomes
