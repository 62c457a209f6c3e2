"""A small fixed study for the export golden tests, built row by row so every id, text and time
is known. The expected records in test_exports.py were worked out by hand from this story.

Conversation 1 (alice, completed: goal "yes", understanding 4; reviewed by bob):
  u1 "Plan a party."                 A plain "Sure! Cake, balloons, games."  B clarify "What kind of party?"
     alice: B clear · bob (review): B                                   → agreement 1.0
     tags: clarification on B (alice live, bob review)
  u2 "A birthday party for my son."  A clarify "How old is he?"  B plain "Balloons and cake."
     alice: A slight · bob (review): B                                  → agreement 0.0
     tags: clarification on A (alice)
  u3 "He is six, as I said."         A plain "A dinosaur theme!"  B clarify "Six? Dinosaurs then?"
     tags on u3: correction (alice, linked to u2's A), rephrase (bob, review): a reaction to u2's A
     as an error; feedback −1 −1 = −2, clipped to −1
     alice: all bad, rewrites A as "A dinosaur party for a six-year-old: cake, fossils, games."
Conversation 2 (carol, active): u1 "Hello?"  A plain "Hi."  B clarify "Hello! What do you need?"
     carol: tie
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from django.contrib.auth import get_user_model

from annotate.models import Comparison, Conversation, Scenario, Study, Turn
from exports.build import export_build
from exports.selection import ExportParams
from labeling.models import Label, Tag
from labeling.services import default_taxonomy
from workers.models import ModelConfig

T0 = dt.datetime(2026, 5, 4, 9, 0, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def build_export_study() -> dict[str, Any]:
    users = {name: get_user_model().objects.create_user(name) for name in ("alice", "bob", "carol")}
    plain = ModelConfig.objects.create(name="model-plain", model_path="/m", params={"temperature": 0.7})
    clarify = ModelConfig.objects.create(name="model-clarify", model_path="/m", system_prompt="Ask if unsure.")
    study = Study.objects.create(name="Golden study", slug="golden", instructions="Plan an event with the assistant.")
    study.model_pool.set([plain, clarify])
    taxonomy = default_taxonomy()
    study.taxonomy = taxonomy
    study.save()
    label = {lab.name: lab for lab in Label.objects.filter(taxonomy=taxonomy)}
    scenario = Scenario.objects.create(
        study=study, external_id="party", title="Party", brief="Plan a party.", hidden_intent="Son's 6th birthday."
    )
    ids: dict[str, Any] = {"users": users, "study": study}

    def conv(rater: str, **fields: Any) -> Conversation:
        return Conversation.objects.create(study=study, scenario=scenario, rater=users[rater], **fields)

    def turn(c: Conversation, key: str, parent: str | None, role: str, text: str, t: float, **fields: Any) -> Turn:
        parent_turn = ids[parent] if parent else None
        depth = parent_turn.depth + 1 if parent_turn else 0
        model = fields.pop("model", None)
        config = {"plain": plain, "clarify": clarify}.get(model) if model else None
        obj = Turn.objects.create(
            conversation=c,
            parent=parent_turn,
            role=role,
            depth=fields.pop("depth", depth),
            text=text,
            model_config=config,
            system_prompt=config.system_prompt if config and not fields.get("is_rewrite") else "",
            params=config.effective_params() if config and not fields.get("is_rewrite") else {},
            **fields,
        )
        times: dict[str, Any] = {"created_at": at(t)}
        if role == "assistant" and not fields.get("is_rewrite"):
            times.update(started_at=at(t), first_token_at=at(t + 0.25), finished_at=at(t + 2))
        Turn.objects.filter(pk=obj.pk).update(**times)
        ids[key] = obj
        return obj

    def vote(c: Conversation, key: str, parent: str, rater: str, choice: str, t: float, **fields: Any) -> None:
        chosen = fields.pop("chosen", None)
        cont = fields.pop("continued_from", None)
        obj = Comparison.objects.create(
            conversation=c,
            parent=ids[parent],
            rater=users[rater],
            choice=choice,
            chosen=ids[chosen] if chosen else None,
            continued_from=ids[cont] if cont else None,
            **fields,
        )
        Comparison.objects.filter(pk=obj.pk).update(created_at=at(t))
        ids[key] = obj

    def tag(key: str, name: str, rater: str, task: str = "live", **fields: Any) -> None:
        Tag.objects.create(turn=ids[key], label=label[name], rater=users[rater], task=task, **fields)

    c1 = conv("alice", status="completed", outcome_goal="yes", outcome_understanding=4, outcome_comment="Nice.")
    ids["c1"] = c1
    turn(c1, "u1", None, "user", "Plan a party.", 0)
    turn(c1, "a1A", "u1", "assistant", "Sure! Cake, balloons, games.", 1, position=0, model="plain", seed=11)
    turn(c1, "a1B", "u1", "assistant", "What kind of party?", 1, position=1, model="clarify", seed=12)
    vote(
        c1, "v1", "u1", "alice", "candidate", 10, chosen="a1B", continued_from="a1B", strength="clear", decision_ms=7000
    )
    turn(c1, "u2", "a1B", "user", "A birthday party for my son.", 20)
    turn(c1, "a2A", "u2", "assistant", "How old is he?", 21, position=0, model="clarify", seed=21)
    turn(c1, "a2B", "u2", "assistant", "Balloons and cake.", 21, position=1, model="plain", seed=22)
    vote(c1, "v2", "u2", "alice", "candidate", 30, chosen="a2A", continued_from="a2A", strength="slight")
    turn(c1, "u3", "a2A", "user", "He is six, as I said.", 40)
    turn(c1, "a3A", "u3", "assistant", "A dinosaur theme!", 41, position=0, model="plain", seed=31)
    turn(c1, "a3B", "u3", "assistant", "Six? Dinosaurs then?", 41, position=1, model="clarify", seed=32)
    turn(
        c1, "r3", "u3", "assistant", "A dinosaur party for a six-year-old: cake, fossils, games.", 50,
        depth=3, position=2, model="plain", is_rewrite=True,
    )  # fmt: skip
    ids["r3"].rewrite_of = ids["a3A"]
    ids["r3"].save(update_fields=["rewrite_of"])
    vote(c1, "v3", "u3", "alice", "all_bad", 50, continued_from="r3", reason="Both ignore what I said.")
    # The review pass: bob votes on the first two branch points.
    vote(c1, "v1r", "u1", "bob", "candidate", 100, chosen="a1B", task="review")
    vote(c1, "v2r", "u2", "bob", "candidate", 101, chosen="a2B", task="review", strength="clear")
    Conversation.objects.filter(pk=c1.pk).update(head=ids["r3"], started_at=at(0), ended_at=at(60))
    tag("a1B", "clarification", "alice")
    tag("a1B", "clarification", "bob", task="review")
    tag("a2A", "clarification", "alice", span_start=0, span_end=14)
    tag("u3", "correction", "alice", linked_turn=ids["a2A"])
    tag("u3", "rephrase", "bob", task="review")
    # A rejected suggestion is not a tag.
    Tag.objects.create(turn=ids["a1A"], label=label["over-response"], rater=users["alice"], source="suggestion",
                       status="rejected")  # fmt: skip

    c2 = conv("carol")
    ids["c2"] = c2
    turn(c2, "w1", None, "user", "Hello?", 200)
    turn(c2, "b1A", "w1", "assistant", "Hi.", 201, position=0, model="plain", seed=41)
    turn(c2, "b1B", "w1", "assistant", "Hello! What do you need?", 201, position=1, model="clarify", seed=42)
    vote(c2, "x1", "w1", "carol", "tie", 210, continued_from="b1A")
    Conversation.objects.filter(pk=c2.pk).update(head=ids["b1A"], started_at=at(200))
    return ids


def export(tmp_path: Path, name: str = "out", **params: Any) -> tuple[list[dict[str, Any]], Path]:
    """Export the golden study (unless `study` says otherwise) and read the rows back, whatever the file format."""
    params.setdefault("study", "golden")
    result = export_build(params=ExportParams(**params), out=tmp_path / name)
    if result.data_file.suffix == ".parquet":
        return pq.read_table(result.data_file).to_pylist(), result.out
    lines = result.data_file.read_bytes()
    if result.data_file.suffix == ".gz":
        lines = gzip.decompress(lines)
    return [json.loads(line) for line in lines.splitlines()], result.out
