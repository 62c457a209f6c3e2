"""Our rows in the layouts of published datasets, for readers who already have tools for those.

`oasst_tree` turns a `tree` row into an Open-Assistant (oasst1) message tree, the nesting of its
`*.trees.jsonl` export: `{message_tree_id, tree_state, prompt}` where every message holds its
`replies`, recursively. The `tree` format itself stays flat (a list of turns with parent ids), as
Arrow and Parquet cannot hold a recursive type. Pure functions of a row: no database, no Django.
docs/exports.md shows the layouts side by side.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

# Our conversation status → oasst1's tree_state.
TREE_STATES = {"completed": "ready_for_export", "active": "growing", "abandoned": "aborted_low_grade"}


def oasst_tree(row: dict[str, Any]) -> dict[str, Any]:
    """A `tree` export row as an oasst1 message tree: messages named by their UUIDs, `user` as `prompter`,
    `synthetic` for model output, each sibling's `rank`, and the confirmed tags as `labels`
    (`{name: {value: share of the turn's taggers, count}}`). Only the first root is nested (a conversation
    has one: its first user message)."""
    nodes = {turn["turn_uuid"]: _message(row, turn) for turn in row["turns"]}
    roots: list[dict[str, Any]] = []
    for turn in row["turns"]:  # siblings in slot order, as exported
        parent = nodes.get(turn["parent_uuid"]) if turn["parent_uuid"] else None
        (roots if parent is None else parent["replies"]).append(nodes[turn["turn_uuid"]])
    return {
        "message_tree_id": row["conversation_uuid"],
        "tree_state": TREE_STATES.get(row["status"], row["status"]),
        "prompt": roots[0] if roots else None,
    }


def _message(row: dict[str, Any], turn: dict[str, Any]) -> dict[str, Any]:
    taggers = {tag["rater"] for tag in turn["tags"]}
    counts = Counter(tag["label"] for tag in turn["tags"])
    votes = [v for v in row["votes"] if v["parent_id"] == turn["parent_id"]] if turn["role"] == "assistant" else []
    return {
        "message_id": turn["turn_uuid"],
        "parent_id": turn["parent_uuid"],
        "user_id": row["rater"] if turn["source"] == "human" else None,
        "created_date": turn["created_at"],
        "text": turn["text"],
        "role": "prompter" if turn["role"] == "user" else "assistant",
        "lang": row["language"],
        "review_count": len(votes),
        "review_result": turn["status"] == "done",
        "deleted": False,
        "rank": turn["rank"],
        "synthetic": turn["source"] == "model",
        "model_name": turn["model"],
        "detoxify": None,  # not measured here
        "message_tree_id": None,  # on the tree, as in oasst1's trees export
        "tree_state": None,
        "emojis": {},
        "labels": {name: {"value": count / len(taggers), "count": count} for name, count in sorted(counts.items())},
        "replies": [],
    }
