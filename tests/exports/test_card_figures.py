"""The dataset card's figures: vote agreement by slot, shared with the dashboard, and counted on exactly the
exported rows (`--model`, `--rater`)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from annotate.models import Comparison, Conversation, Scenario, Study, Turn
from exports.selection import ExportParams
from exports.services import export_build
from labeling import agreement
from labeling.dashboard import study_dashboard
from workers.models import ModelConfig

pytestmark = pytest.mark.django_db


def _study(units: int, seed: int = 7) -> dict[str, Any]:
    """alice's conversation: `units` branch points with two `plain` candidates, voted A/B at random by alice
    (live), bob and carol (review). carol's conversation: 3 branch points of `plain` against `clarify`, voted by
    carol and bob."""
    users = {name: get_user_model().objects.create_user(name) for name in ("alice", "bob", "carol")}
    plain = ModelConfig.objects.create(name="model-plain", model_path="/m")
    clarify = ModelConfig.objects.create(name="model-clarify", model_path="/m")
    study = Study.objects.create(name="Random study", slug="random")
    scenario = Scenario.objects.create(study=study, external_id="s", title="S", brief="B", hidden_intent="H")
    rng = random.Random(seed)
    by_id: dict[int, dict[str, str]] = {}  # branch point → rater → chosen reply id (the old coding)

    def conversation(rater: str, n: int, models: tuple[ModelConfig, ModelConfig], voters: list[str]) -> None:
        conv = Conversation.objects.create(study=study, scenario=scenario, rater=users[rater])
        parent = None
        for depth in range(n):
            user = Turn.objects.create(conversation=conv, parent=parent, role="user", depth=2 * depth, text="Hi")
            replies = [
                Turn.objects.create(
                    conversation=conv,
                    parent=user,
                    role="assistant",
                    depth=2 * depth + 1,
                    text=f"r{k}",
                    position=k,
                    model_config=config,
                )  # fmt: skip
                for k, config in enumerate(models)
            ]
            for voter in voters:
                chosen = rng.choice(replies)
                Comparison.objects.create(
                    conversation=conv, parent=user, rater=users[voter], choice="candidate", chosen=chosen,
                    continued_from=replies[0] if voter == rater else None,
                    task="live" if voter == rater else "review",
                )  # fmt: skip
                by_id.setdefault(user.pk, {})[voter] = str(chosen.pk)
            parent = replies[0]
        Conversation.objects.filter(pk=conv.pk).update(head=parent)

    conversation("alice", units, (plain, plain), ["alice", "bob", "carol"])
    conversation("carol", 3, (plain, clarify), ["carol", "bob"])
    return {"study": study, "by_id": by_id}


def _selection(tmp_path: Any, name: str, **params: Any) -> tuple[dict[str, Any], str]:
    result = export_build(params=ExportParams(study="random", **params), out=tmp_path / name)
    manifest = json.loads((result.out / "manifest.json").read_text())
    return manifest["selection"], (result.out / "README.md").read_text()


def test_random_voters_agree_by_chance_only_and_dashboard_and_card_say_the_same(tmp_path):
    data = _study(300)
    dashboard = study_dashboard(study=data["study"]).votes
    selection, card = _selection(tmp_path, "all", format="tree")
    # Coin-flipping raters: alpha near 0 by slot; coded by reply id it was inflated to about 0.5.
    assert dashboard.alpha is not None and abs(dashboard.alpha) < 0.1
    assert agreement.krippendorff_alpha(data["by_id"]) > 0.3
    assert selection["vote_alpha"] == round(dashboard.alpha, 4)
    assert selection["vote_units"] == dashboard.comparisons == 303
    assert f"{dashboard.alpha:.3f} over 303 units" in card


def test_card_counts_only_the_rows_of_the_model_filter(tmp_path):
    _study(40)
    selection, card = _selection(tmp_path, "plain", format="tree", models=("model-plain",))
    # Only alice's conversation is all `model-plain`: one tree row, and the card speaks of it alone.
    assert (selection["conversations"], selection["comparisons"], selection["raters"]) == (1, 120, 3)
    assert selection["models"] == ["model-plain"] and selection["vote_units"] == 40
    assert "model-clarify" not in card.split("## Counts")[1].split("##")[0]
    dpo, _ = _selection(tmp_path, "dpo-plain", format="dpo", models=("model-plain",))
    assert (dpo["conversations"], dpo["vote_units"], dpo["models"]) == (1, 40, ["model-plain"])


def test_card_counts_only_the_votes_of_the_rater_filter(tmp_path):
    _study(40)
    selection, _ = _selection(tmp_path, "alice", format="dpo", raters=("alice",))
    # alice's 40 live votes; one rater per branch point leaves nothing to agree on.
    assert (selection["conversations"], selection["comparisons"], selection["raters"]) == (1, 40, 1)
    assert (selection["vote_units"], selection["vote_alpha"]) == (0, None)
    bob, _ = _selection(tmp_path, "bob", format="dpo", raters=("bob",))
    assert (bob["conversations"], bob["comparisons"], bob["raters"]) == (2, 43, 1)


def test_card_and_dashboard_give_the_same_tag_agreement_with_a_reviewers_no_label(tmp_path):
    """Two reviewers cover alice's conversation: bob tags a reply, carol leaves it untagged. carol's silence is
    her "no label" for the card as for the dashboard; a third reviewer whose review expired codes nothing."""
    from labeling.models import Label, ReviewAssignment, Tag

    users = {name: get_user_model().objects.create_user(name) for name in ("alice", "bob", "carol", "dave")}
    config = ModelConfig.objects.create(name="model-plain", model_path="/m")
    study = Study.objects.create(name="Tag study", slug="random")
    scenario = Scenario.objects.create(study=study, external_id="s", title="S", brief="B")
    conv = Conversation.objects.create(study=study, scenario=scenario, rater=users["alice"], status="completed")
    parent, replies = None, []
    for depth in range(3):
        user = Turn.objects.create(conversation=conv, parent=parent, role="user", depth=2 * depth, text="Hi")
        reply = Turn.objects.create(
            conversation=conv, parent=user, role="assistant", depth=2 * depth + 1, text="r", model_config=config
        )
        Comparison.objects.create(
            conversation=conv, parent=user, rater=users["alice"], choice="candidate", chosen=reply,
            continued_from=reply, task="live",
        )  # fmt: skip
        parent = reply
        replies.append(reply)
    Conversation.objects.filter(pk=conv.pk).update(head=parent)
    for name, status in (("bob", "done"), ("carol", "done"), ("dave", "expired")):
        ReviewAssignment.objects.create(conversation=conv, rater=users[name], status=status)
    clarification = Label.objects.get(name="clarification")
    for reply in replies:
        Tag.objects.create(turn=reply, label=clarification, rater=users["bob"], task="review")
    Tag.objects.create(turn=replies[0], label=clarification, rater=users["carol"], task="review")
    Tag.objects.create(turn=replies[1], label=clarification, rater=users["dave"], task="review")

    dashboard = study_dashboard(study=study)
    selection, _ = _selection(tmp_path, "tags", format="tree")
    # bob and carol code every turn shown (3 messages, 3 replies): they agree on 4 turns of 6
    assert dashboard.coded_turns == selection["tag_units"] == 6
    assert dashboard.masi_alpha is not None
    assert selection["tag_alpha_masi"] == round(dashboard.masi_alpha, 4)
