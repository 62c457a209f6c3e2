"""Peer check: our exports next to the published datasets they imitate (tests/exports/published_schemas.py).

`dpo` against TRL's conversational preference example, `kto` against TRL's unpaired form, `arena`
against the Chatbot Arena conversations release, `tree` against oasst1's message trees (through
`exports.peers.oasst_tree`). docs/exports.md shows each side by side.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from datasets import Dataset
from trl import is_conversational, unpair_preference_dataset

from exports.formats import SCHEMAS
from exports.peers import oasst_tree
from tests.exports import published_schemas as published
from tests.exports.export_study import build_export_study, export

pytestmark = pytest.mark.django_db

# Chatbot Arena columns we do not produce: they are moderation scores of the release's own classifiers.
ARENA_NOT_PRODUCED = {"openai_moderation", "toxic_chat_tag"}


@pytest.fixture
def story() -> dict[str, Any]:
    return build_export_study()


def _type_name(dtype: pa.DataType) -> str:
    """An Arrow type in the published schemas' short notation."""
    if pa.types.is_list(dtype):
        inner = dtype.value_type
        fields = ", ".join(sorted(f"{field.name}: {_type_name(field.type)}" for field in inner))
        return f"list[{{{fields}}}]"
    return {pa.string(): "string", pa.int64(): "int64", pa.bool_(): "bool", pa.float64(): "float64"}.get(
        dtype, str(dtype)
    )


def _message_shape(messages: list[dict[str, str]]) -> list[tuple[tuple[str, ...], str]]:
    return [(tuple(sorted(m)), m["role"]) for m in messages]


@pytest.mark.parametrize("fmt", ["dpo", "segments"])
def test_dpo_and_segment_rows_have_trls_conversational_preference_structure(story, tmp_path: Path, fmt: str) -> None:
    example = published.TRL_CONVERSATIONAL_PREFERENCE_EXAMPLE
    rows, _ = export(tmp_path, format=fmt)
    assert rows
    for row in rows:
        assert list(row)[:3] == list(published.TRL_PREFERENCE_KEYS)
        assert is_conversational(row) and is_conversational(example)
        for key in published.TRL_PREFERENCE_KEYS:
            assert {keys for keys, _ in _message_shape(row[key])} == {keys for keys, _ in _message_shape(example[key])}
        # As in TRL's example: the prompt ends on the user's turn, each side starts with the assistant's reply.
        assert row["prompt"][-1]["role"] == example["prompt"][-1]["role"] == "user"
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == example["chosen"][0]["role"]
        assert row["chosen"][-1]["role"] == row["rejected"][-1]["role"] == "assistant"


def test_kto_rows_have_the_columns_trl_unpairs_a_preference_dataset_into(story, tmp_path: Path) -> None:
    dpo, _ = export(tmp_path, format="dpo")
    kto, _ = export(tmp_path, "kto", format="kto")
    unpaired = unpair_preference_dataset(
        Dataset.from_list([{key: row[key] for key in published.TRL_PREFERENCE_KEYS} for row in dpo])
    )
    assert tuple(unpaired.column_names) == published.TRL_UNPAIRED_PREFERENCE_KEYS
    assert list(kto[0])[:3] == list(published.TRL_UNPAIRED_PREFERENCE_KEYS)
    assert _message_shape(kto[0]["completion"]) == _message_shape(unpaired[0]["completion"])


def test_arena_rows_have_the_chatbot_arena_release_columns_with_its_types_and_values(story, tmp_path: Path) -> None:
    ours = {field.name: _type_name(field.type) for field in SCHEMAS["arena"]}
    theirs = {k: v for k, v in published.CHATBOT_ARENA_CONVERSATIONS_FEATURES.items() if k not in ARENA_NOT_PRODUCED}
    assert {name: ours.get(name) for name in theirs} == theirs
    # Their columns first, in their order; ours (study, uuids, votes, …) after them.
    assert [name for name in ours if name in theirs] == list(theirs)

    rows, _ = export(tmp_path, format="arena")
    for row in rows:
        assert row["winner"] in published.CHATBOT_ARENA_WINNER_VALUES
        assert re.fullmatch(r"[0-9a-f]{32}", row["question_id"])
        for side in ("conversation_a", "conversation_b"):
            assert all(tuple(m) == published.CHATBOT_ARENA_MESSAGE_KEYS for m in row[side])
            assert row[side][-1]["role"] == "assistant"
        assert isinstance(row["tstamp"], float) and isinstance(row["turn"], int) and row["language"] == "en"


def test_tree_rows_nest_as_oasst1_message_trees(story, tmp_path: Path) -> None:
    rows, _ = export(tmp_path, format="tree")
    fields = set(published.OASST1_MESSAGE_FIELDS)
    nesting = published.OASST1_TREE_MESSAGE_NESTING
    for row in rows:
        tree = oasst_tree(row)
        assert tuple(tree) == published.OASST1_TREE_KEYS
        assert tree["message_tree_id"] == row["conversation_uuid"]

        seen: list[tuple[str, str | None]] = []

        def walk(node: dict[str, Any], parent: str | None, seen: list[tuple[str, str | None]] = seen) -> None:
            assert set(node) == fields | {nesting["children_key"]}
            assert node["role"] in published.OASST1_ROLES and node["parent_id"] == parent
            assert all(node[name] is None for name in nesting["node_fields_null_in_trees"])
            seen.append((node["message_id"], parent))
            for reply in node[nesting["children_key"]]:
                walk(reply, node["message_id"])

        root = tree[nesting["root_key"]]
        walk(root, None)
        # Every turn, each under its parent: the flat tree and the nested one hold the same edges.
        assert sorted(seen, key=str) == sorted(((t["turn_uuid"], t["parent_uuid"]) for t in row["turns"]), key=str)
        turns = {t["turn_uuid"]: t for t in row["turns"]}
        for message_id, _ in seen:
            turn = turns[message_id]
            assert (turn["role"] == "user") == (_node(root, message_id)["role"] == "prompter")
            assert _node(root, message_id)["synthetic"] == (turn["source"] == "model")
            assert _node(root, message_id)["rank"] == turn["rank"]


def _node(root: dict[str, Any], message_id: str) -> dict[str, Any]:
    stack = [root]
    while stack:
        node = stack.pop()
        if node["message_id"] == message_id:
            return node
        stack.extend(node["replies"])
    raise KeyError(message_id)
