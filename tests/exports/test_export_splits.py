"""`--split train=0.9,test=0.1`: conversations shared out among splits by a seeded hash, one data
file per split, each declared in the card so `load_dataset(<export dir>)` gives a DatasetDict."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import pytest
import yaml
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from annotate.models import Comparison, Conversation, Scenario, Study, Turn
from core.errors import ActionRefused
from exports import build
from exports.build import export_build
from exports.selection import ExportParams, split_of, split_shares
from tests.exports.export_study import build_export_study
from workers.models import ModelConfig

CONVERSATIONS = 60


def build_split_study() -> list[int]:
    """A study of CONVERSATIONS conversations, each with two branch points voted on: two dpo rows
    per conversation, the second's prompt holding the first's (a prefix two splits must not share)."""
    rater = get_user_model().objects.create_user("splitter")
    model = ModelConfig.objects.create(name="model-split", model_path="/m")
    study = Study.objects.create(name="Split study", slug="splits")
    study.model_pool.set([model])
    scenario = Scenario.objects.create(study=study, external_id="s", title="S", brief="Ask.", hidden_intent="")
    ids = []
    for n in range(CONVERSATIONS):
        conv = Conversation.objects.create(study=study, scenario=scenario, rater=rater, status="completed")
        parent = None
        for depth in range(2):
            user = Turn.objects.create(
                conversation=conv, parent=parent, role="user", depth=2 * depth, text=f"Question {n}.{depth}"
            )
            replies = [
                Turn.objects.create(
                    conversation=conv,
                    parent=user,
                    role="assistant",
                    depth=2 * depth + 1,
                    position=position,
                    text=f"Answer {n}.{depth}.{position}",
                    model_config=model,
                )  # fmt: skip
                for position in range(2)
            ]
            Comparison.objects.create(
                conversation=conv, parent=user, rater=rater, choice="candidate", chosen=replies[0],
                continued_from=replies[0], strength="clear",
            )  # fmt: skip
            parent = replies[0]
        Conversation.objects.filter(pk=conv.pk).update(head=parent)
        ids.append(conv.pk)
    return ids


def rows_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def split_export(out: Path, split: str = "train=0.8,test=0.2", **kwargs: Any) -> dict[str, list[dict[str, Any]]]:
    result = export_build(params=ExportParams(study="splits", format="dpo", split=split, **kwargs), out=out)
    names = [name for name, _ in split_shares(split)]
    assert [path.name for path in result.data_files] == [f"dpo-{name}.jsonl" for name in names]
    return {name: rows_of(out / f"dpo-{name}.jsonl") for name in names}


@pytest.mark.django_db
def test_split_sizes_follow_the_shares_and_no_conversation_is_in_two_splits(tmp_path):
    ids = build_split_study()
    by_split = split_export(tmp_path / "out", split="train=0.7,validation=0.1,test=0.2")
    conversations = {name: {row["conversation_id"] for row in rows} for name, rows in by_split.items()}
    assert set().union(*conversations.values()) == set(ids)
    assert sum(len(found) for found in conversations.values()) == CONVERSATIONS  # disjoint
    # Whole conversations: both of a conversation's rows (the second's prompt starts with the first's) in one split.
    for rows in by_split.values():
        assert set(Counter(row["conversation_id"] for row in rows).values()) == {2}
    assert 30 <= len(conversations["train"]) <= 54
    assert 5 <= len(conversations["test"]) <= 22
    assert len(conversations["validation"]) >= 1


@pytest.mark.django_db
def test_the_same_seed_gives_the_same_assignment_whatever_the_chunks(tmp_path):
    build_split_study()
    first = split_export(tmp_path / "a", split_seed=7)
    again = export_build(
        params=ExportParams(study="splits", format="dpo", split="train=0.8,test=0.2", split_seed=7),
        out=tmp_path / "b",
        chunk=7,
    )
    for name in ("train", "test"):
        assert (tmp_path / "b" / f"dpo-{name}.jsonl").read_bytes() == (
            tmp_path / "a" / f"dpo-{name}.jsonl"
        ).read_bytes()
    assert again.rows == sum(len(rows) for rows in first.values())
    other = split_export(tmp_path / "c", split_seed=8)
    assert {r["conversation_id"] for r in other["test"]} != {r["conversation_id"] for r in first["test"]}


@pytest.mark.django_db(transaction=True)
def test_the_same_seed_gives_the_same_files_across_processes(tmp_path, monkeypatch):
    build_split_study()
    parts: list[int] = []
    real = build.export_parts
    monkeypatch.setattr(
        build, "export_parts", lambda sel, spans, **kw: parts.append(len(spans)) or real(sel, spans, **kw)
    )
    params = ExportParams(study="splits", format="dpo", split="train=0.8,test=0.2", split_seed=3)
    export_build(params=params, out=tmp_path / "one", chunk=60, processes=1)
    export_build(params=params, out=tmp_path / "three", chunk=5, processes=3)
    assert parts == [3]  # the second export was written by three processes
    for name in ("dpo-train.jsonl", "dpo-test.jsonl", "manifest.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "three" / name).read_bytes()


def test_the_assignment_is_a_seeded_hash_of_the_conversation():
    shares = split_shares("train=0.5,test=0.5")
    assert split_of(12, shares=shares, seed=0) == split_of(12, shares=shares, seed=0)
    assert len({split_of(n, shares=shares, seed=0) for n in range(20)}) == 2


@pytest.mark.django_db
def test_load_dataset_gives_the_declared_splits(tmp_path):
    build_split_study()
    for file_format in ("jsonl", "parquet"):
        out = tmp_path / file_format
        export_build(
            params=ExportParams(study="splits", format="dpo", file_format=file_format, split="train=0.9,test=0.1"),
            out=out,
        )
        manifest = json.loads((out / "manifest.json").read_text())
        suffix = "jsonl" if file_format == "jsonl" else "parquet"
        assert [(f["split"], f["path"]) for f in manifest["files"]] == [
            ("train", f"dpo-train.{suffix}"), ("test", f"dpo-test.{suffix}"),
        ]  # fmt: skip
        assert manifest["parameters"]["split"] == "train=0.9,test=0.1"
        header = yaml.safe_load((out / "README.md").read_text().split("---")[1])
        assert header["configs"][0]["data_files"] == [
            {"split": "train", "path": f"dpo-train.{suffix}"}, {"split": "test", "path": f"dpo-test.{suffix}"},
        ]  # fmt: skip
        loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / f"cache-{file_format}"))
        assert set(loaded) == {"train", "test"}
        assert {name: loaded[name].num_rows for name in loaded} == {f["split"]: f["rows"] for f in manifest["files"]}
        assert sum(f["rows"] for f in manifest["files"]) == 2 * CONVERSATIONS


@pytest.mark.django_db
def test_an_unsplit_export_is_one_train_file_as_before(tmp_path):
    build_export_study()
    result = export_build(params=ExportParams(study="golden", format="dpo"), out=tmp_path / "out")
    assert result.data_files == (tmp_path / "out" / "dpo.jsonl",)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "split" not in manifest["parameters"] and "split" not in manifest["files"][0]


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ("train=0.9,test=0.2", "add up to 1.1, not 1"),
        ("train=0.9", "add up to 0.9, not 1"),
        ("train", "is not NAME=SHARE"),
        ("train=x,test=0.1", "is not a number"),
        ("train=1.5,test=-0.5", "above 0 and at most 1"),
        ("train=0.5,train=0.5", "named twice"),
        ("tr ain=0.5,test=0.5", "is not a split name"),
        ("train=nan,test=0.1", "above 0 and at most 1"),
    ],
)
@pytest.mark.django_db
def test_bad_splits_are_refused_before_reading(tmp_path, split, message):
    build_export_study()
    with pytest.raises(ActionRefused, match=message):
        export_build(params=ExportParams(study="golden", format="dpo", split=split), out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.django_db
def test_the_command_refuses_a_bad_split_cleanly_and_writes_a_good_one(tmp_path):
    build_split_study()
    common = ["--study", "splits", "--format", "dpo", "--quiet"]
    with pytest.raises(CommandError, match="Bad split “train=0.9,test=0.2”: The split shares add up to 1.1"):
        call_command("export_dataset", *common, "--out", str(tmp_path / "bad"), "--split", "train=0.9,test=0.2")
    call_command("export_dataset", *common, "--out", str(tmp_path / "ok"), "--split", "train=0.9,test=0.1",
                 "--split-seed", "4")  # fmt: skip
    assert sorted(path.name for path in (tmp_path / "ok").iterdir()) == [
        "README.md", "dpo-test.jsonl", "dpo-train.jsonl", "manifest.json",
    ]  # fmt: skip


@pytest.mark.django_db
def test_a_split_left_empty_is_refused(tmp_path):
    build_export_study()  # one conversation with dpo rows: one of two splits gets none
    with pytest.raises(ActionRefused, match="gets no `dpo` rows"):
        export_build(params=ExportParams(study="golden", format="dpo", split="train=0.5,test=0.5"), out=tmp_path / "o")


@pytest.mark.django_db
def test_the_card_counts_the_rows_of_every_split(tmp_path):
    """The card's counts name each split's file with its rows (not only the first split's)."""
    build_split_study()
    out = tmp_path / "card"
    split_export(out, split="train=0.7,test=0.3")
    manifest = json.loads((out / "manifest.json").read_text())
    card = (out / "README.md").read_text()
    for file in manifest["files"]:
        assert f"| rows in `{file['path']}` | {file['rows']} |" in card
