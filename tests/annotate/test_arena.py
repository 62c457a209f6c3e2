"""Arena studies: one reply from each of two models per message, pairs balanced across raters, random sides,
names masked in replies and revealed once the vote is in, the vote then final (docs/arena.md)."""

from __future__ import annotations

import itertools
import uuid
from collections import Counter

import pytest
from django.urls import reverse

from annotate import generation, selectors, services
from annotate.models import ArenaPair, Comparison, Turn
from core.errors import ActionRefused
from tests.concurrency import in_parallel
from tests.helpers import choose, finish_candidates
from workers.backends import GenerationResult
from workers.identity import MASK, identity_check, identity_masked, identity_names


def _models(make_config, count):
    return [make_config(f"arena-{i}") for i in range(count)]


def test_each_message_gets_one_reply_from_each_of_two_different_models(make_study, make_conversation, make_config):
    study = make_study(configs=_models(make_config, 3), arena=True, candidates_per_turn=3, attention_check_rate=1.0)
    conversation = make_conversation(study=study)
    user_turn = services.message_send(conversation=conversation, text="Hello")
    replies = selectors.candidates_of(user_turn)
    # K is 2 in an arena whatever candidates_per_turn says, and no attention check replaces a model.
    assert len(replies) == 2 and not any(r.is_attention_check for r in replies)
    assert replies[0].model_config_id != replies[1].model_config_id


@pytest.mark.django_db(transaction=True)
def test_pairs_are_balanced_across_many_raters_at_once_and_sides_are_random(make_study, make_user, make_config):
    configs = _models(make_config, 4)  # 6 pairs
    study = make_study(configs=configs, arena=True, scenarios=24)
    raters = [make_user() for _ in range(24)]
    conversations = [services.conversation_start(study=study, rater=rater) for rater in raters]

    def send(i: int) -> tuple[int, int]:
        turn = services.message_send(conversation=conversations[i], text=f"Question {i}")
        a, b = selectors.candidates_of(turn)
        return a.model_config_id, b.model_config_id

    outcomes = in_parallel(24, send)
    assert [o.error for o in outcomes] == [None] * 24
    sides = [o.value for o in outcomes]
    pairs = Counter(frozenset(side) for side in sides)
    # 24 messages over 6 pairs at the same moment: each pair exactly 4 (the pair rows are locked while one is drawn).
    assert sorted(pairs.values()) == [4] * 6
    assert set(ArenaPair.objects.filter(study=study).values_list("battles", flat=True)) == {4}
    # Random sides: models sit left as often as chance says (all four did, here, in 24 draws: p > 0.99).
    assert len(Counter(a for a, _ in sides)) >= 3


def test_sides_are_drawn_at_random_and_balance_holds_sequentially(make_study, make_user, make_config):
    configs = _models(make_config, 3)
    study = make_study(configs=configs, arena=True, scenarios=60)
    seen: Counter[tuple[int, int]] = Counter()
    for _ in range(60):
        conversation = services.conversation_start(study=study, rater=make_user())
        a, b = selectors.candidates_of(services.message_send(conversation=conversation, text="Hi"))
        seen[(a.model_config_id, b.model_config_id)] += 1
        counts = list(ArenaPair.objects.filter(study=study).values_list("battles", flat=True))
        assert max(counts) - min(counts) <= 1
    # Both orders of every pair came up (the chance that a side never does in 20 draws is 2 · 0.5^20 per pair).
    for x, y in itertools.combinations(sorted(c.pk for c in configs), 2):
        assert seen[(x, y)] and seen[(y, x)]


def test_a_model_added_later_catches_up_and_a_pool_of_one_is_refused(make_study, make_user, make_config):
    a, b, c = _models(make_config, 3)
    study = make_study(configs=[a, b], arena=True, scenarios=10)
    for _ in range(4):
        services.message_send(conversation=services.conversation_start(study=study, rater=make_user()), text="Hi")
    study.model_pool.add(c)
    drawn = []
    for _ in range(4):
        turn = services.message_send(
            conversation=services.conversation_start(study=study, rater=make_user()), text="Hi"
        )
        drawn.append({t.model_config_id for t in selectors.candidates_of(turn)})
    assert all(c.pk in pair for pair in drawn)  # the new pairs (a–c, b–c) had none: they come first
    study.model_pool.set([a])
    with pytest.raises(ActionRefused, match="two enabled models") as refused:
        services.message_send(conversation=services.conversation_start(study=study, rater=make_user()), text="Hi")
    assert refused.value.status == 409


def test_identity_names_are_masked_whole_words_any_case_longest_first():
    names = identity_names(" Gemma, Google ,gemma 3, ,DeepMind")
    assert names == ("DeepMind", "gemma 3", "Google", "Gemma")
    text, leaked = identity_masked("I am Gemma 3, built by google DeepMind. A dilemma? GEMMA's fine.", names)
    assert text == f"I am {MASK}, built by {MASK} {MASK}. A dilemma? {MASK}'s fine." and leaked
    assert identity_masked("A dilemma about gems.", names) == ("A dilemma about gems.", False)
    flag_only = identity_check("Gemma", mask=False)
    assert flag_only is not None and flag_only("I am Gemma.") == ("I am Gemma.", True)
    assert identity_check(" , ", mask=False) is None


@pytest.mark.parametrize("arena", [True, False])
def test_a_reply_naming_its_model_is_masked_in_arena_studies_and_flagged_everywhere(
    make_study, make_conversation, make_config, arena
):
    configs = [make_config(identity_names="Gemma, Google"), make_config()]
    study = make_study(configs=configs, arena=arena, candidates_per_turn=2)
    conversation = make_conversation(study=study)
    user_turn = services.message_send(conversation=conversation, text="Who are you?")
    reply = next(t for t in selectors.candidates_of(user_turn) if t.model_config_id == configs[0].pk)
    attempt = generation.turn_claim(turn_id=reply.pk)
    mine = Turn.objects.filter(pk=reply.pk, attempt=attempt, status=Turn.Status.STREAMING)
    check = generation._identity_check(Turn.objects.select_related("model_config").get(pk=reply.pk))
    # While streaming: the stored (and streamed) text is already masked.
    on_text = generation._text_writer(mine, reply.pk, attempt, identity=check)
    assert on_text("I am Gemma")
    reply.refresh_from_db()
    assert reply.text == (f"I am {MASK}" if arena else "I am Gemma")
    assert (
        generation._finish(mine, reply.pk, GenerationResult(text="I am Gemma, made by Google."), identity=check)
        == "done"
    )
    reply.refresh_from_db()
    assert reply.identity_leak is True
    assert reply.text == (f"I am {MASK}, made by {MASK}." if arena else "I am Gemma, made by Google.")


def test_names_are_hidden_until_the_vote_then_revealed_and_the_vote_is_final(
    client, make_study, make_user, make_config
):
    configs = [make_config("arena-left"), make_config("arena-right")]
    study = make_study(configs=configs, arena=True)
    rater = make_user()
    client.force_login(rater)
    conversation = services.conversation_start(study=study, rater=rater)
    user_turn = services.message_send(conversation=conversation, text="Hello")
    a, b = finish_candidates(user_turn, ("First reply.", "Second reply."))
    page = client.get(reverse("annotate:conversation", args=[conversation.pk])).content.decode()
    assert "First reply." in page and "arena-left" not in page and "arena-right" not in page

    vote = {"parent": user_turn.pk, "choice": str(b.pk), "idempotency_key": str(uuid.uuid4())}
    response = client.post(reverse("annotate:vote", args=[conversation.pk]), vote, HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert response.status_code == 200
    assert f"Reply A was {a.model_config.name}, Reply B was {b.model_config.name}" in body
    assert "Your vote is final." in body
    # The lived path names the winner from now on; the conversation goes on from it.
    page = client.get(reverse("annotate:conversation", args=[conversation.pk])).content.decode()
    assert f"· {b.model_config.name}" in page
    conversation.refresh_from_db()
    assert conversation.head_id == b.pk
    # A second vote on the same message (another tab, a changed mind) is refused: the vote is final.
    again = {**vote, "choice": str(a.pk), "idempotency_key": str(uuid.uuid4())}
    assert client.post(reverse("annotate:vote", args=[conversation.pk]), again).status_code in (302, 409)
    assert Comparison.objects.get(parent=user_turn).chosen_id == b.pk


def test_tie_in_an_arena_follows_the_studys_rule_and_still_reveals(make_study, make_conversation, make_config):
    study = make_study(configs=[make_config(), make_config()], arena=True)
    conversation = make_conversation(study=study)
    user_turn = services.message_send(conversation=conversation, text="Hello")
    a, _ = finish_candidates(user_turn)
    comparison = choose(conversation, user_turn.pk, choice="tie", continue_from_id=a.pk)
    assert comparison.continued_from_id == a.pk
    assert services.arena_reveal(comparison).startswith("Revealed: Reply A was ")
