"""The conversation tree's few rules, in one place, for model instances and export rows alike.

A conversation is a tree of turns linked by `parent_id`. Branches start only at user turns: each
user turn is answered by K sampled candidates (slots A, B, … by `position`) and perhaps a rater's
rewrite; the chosen one continues, unchosen candidates get no children. Every function here
works on anything with the attributes it names (a `Turn`, an export's `TurnRow`), so the ORM
reads, the review pages and the dataset exports all walk the tree the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, TypeVar


class Node(Protocol):
    @property
    def parent_id(self) -> int | None: ...


class Reply(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def parent_id(self) -> int | None: ...

    @property
    def role(self) -> str: ...

    @property
    def position(self) -> int: ...


class Candidate(Protocol):
    @property
    def is_rewrite(self) -> bool: ...

    @property
    def status(self) -> str: ...

    @property
    def position(self) -> int: ...


N = TypeVar("N", bound=Node)
R = TypeVar("R", bound=Reply)
C = TypeVar("C", bound=Candidate)

DONE = "done"  # Turn.Status.DONE, spelt out so that this module needs no model
ASSISTANT = "assistant"  # Turn.Role.ASSISTANT, likewise


def path_to(turns_by_id: Mapping[int, N], tip_id: int | None) -> list[N]:
    """The turns from the first message down to `tip_id` (included), in order.

    Stops quietly where a parent is missing from `turns_by_id` (a partial read).
    """
    path: list[N] = []
    while tip_id is not None and tip_id in turns_by_id:
        turn = turns_by_id[tip_id]
        path.append(turn)
        tip_id = turn.parent_id
    path.reverse()
    return path


def replies_by_parent(turns: Iterable[R]) -> dict[int, list[R]]:
    """The assistant turns among `turns` by the id of the turn they answer, each list in slot order.

    Every reply is there (rewrites, failed and unfinished ones too); ties in slot are broken by id.
    """
    replies: dict[int, list[R]] = {}
    for turn in sorted(turns, key=lambda t: (t.position, t.id)):
        if turn.role == ASSISTANT and turn.parent_id is not None:
            replies.setdefault(turn.parent_id, []).append(turn)
    return replies


def finished_candidates(replies: Iterable[C]) -> list[C]:
    """The sampled replies to a user turn that finished, in slot order: what a vote compares.

    Rewrites are the rater's own text, and failed or unfinished replies cannot be judged.
    """
    return sorted((r for r in replies if not r.is_rewrite and r.status == DONE), key=lambda r: r.position)


def slot_letter(position: int) -> str:
    """The letter a rater sees for a candidate slot: 0 → A, 1 → B, …"""
    return chr(ord("A") + position)
