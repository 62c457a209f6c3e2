"""The study dashboard on PostgreSQL: agreement, activity, suggestions and grounding rates, and the page."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from annotate import services
from annotate.models import Comparison, Conversation, Study, Turn
from labeling import services as labeling
from labeling.dashboard import StudyDashboard, dashboard_from_json, dashboard_to_json, study_dashboard
from labeling.models import DashboardSnapshot, Label, ReviewAssignment, Tag
from labeling.tasks import dashboard_refresh_task
from labeling.views import dashboard as dashboard_views
from tests.helpers import choose, finish_candidates, finished_conversation
from tests.processes import wait_until

pytestmark = pytest.mark.django_db


@dataclass
class Fixture:
    study: Study
    live: Any
    live2: Any
    first: Any  # reviewer R1
    second: Any  # reviewer R2
    turns: dict[str, Turn]
    configs: list[Any]


def _suggest(turn: Turn, rater: Any, label: str) -> Tag:
    """A pending suggestion (as the suggestion task would write it)."""
    found = Label.objects.get(taxonomy__slug="default", name=label)
    return Tag.objects.create(
        turn=turn, label=found, rater=rater, task=Tag.Task.REVIEW, source=Tag.Source.SUGGESTION,
        status=Tag.Status.SUGGESTED,
    )  # fmt: skip


def _send(conversation: Conversation, text: str, configs: list[Any]) -> tuple[Turn, Turn, Turn]:
    """A user message and its two finished candidates: slot A from configs[0], slot B from configs[1]."""
    user_turn = services.message_send(conversation=conversation, text=text)
    for position, config in enumerate(configs):
        Turn.objects.filter(parent=user_turn, position=position).update(model_config=config)
    a, b = finish_candidates(user_turn)
    return user_turn, a, b


@pytest.fixture
def study_data(make_study, make_config, make_user) -> Fixture:
    configs = [make_config("m1"), make_config("m2")]
    study = make_study(configs=configs)
    live, live2 = make_user("live"), make_user("live2")
    first, second = make_user("r1"), make_user("r2")

    # Given a conversation by `live`: u1 → a1 chosen, u2 → b2 chosen (lived path u1, a1, u2, b2).
    conversation = services.conversation_start(study=study, rater=live)
    u1, a1, b1 = _send(conversation, "Plan a party", configs)
    labeling.tag_add(rater=live, turn_id=a1.pk, label="clarification")
    labeling.tag_add(rater=live, turn_id=b1.pk, label="no-grounding-act")
    vote1 = choose(conversation, u1.pk, choice="candidate", chosen_id=a1.pk)
    u2, a2, b2 = _send(conversation, "For kids please", configs)
    vote2 = choose(conversation, u2.pk, choice="candidate", chosen_id=b2.pk)
    Comparison.objects.filter(pk=vote1.pk).update(decision_ms=1000)
    Comparison.objects.filter(pk=vote2.pk).update(decision_ms=3000)
    services.conversation_finish(conversation=conversation, goal="yes", understanding=4)

    # ... reviewed by r1 and r2 (review tags need an open assignment).
    for reviewer in (first, second):
        ReviewAssignment.objects.create(conversation=conversation, rater=reviewer)
    labeling.tag_add(rater=first, turn_id=a1.pk, label="clarification", task="review")
    labeling.tag_add(rater=first, turn_id=u2.pk, label="rephrase", task="review")
    labeling.tag_add(rater=first, turn_id=u2.pk, label="correction", task="review")
    accepted = _suggest(b2, first, "acknowledgment")
    labeling.suggestion_decide(rater=first, tag_id=accepted.pk, accept=True)
    _suggest(u1, first, "topic-switch")  # left pending: not a tag yet
    labeling.tag_add(rater=second, turn_id=a1.pk, label="clarification", task="review")
    labeling.tag_add(rater=second, turn_id=a1.pk, label="follow-up", task="review")
    labeling.tag_add(rater=second, turn_id=u2.pk, label="rephrase", task="review")
    rejected = _suggest(a1, second, "repair")
    labeling.suggestion_decide(rater=second, tag_id=rejected.pk, accept=False)

    # And a second conversation, by `live2`, coded by nobody else: v1 → x1 (m1), y1 (m2), no vote.
    other = services.conversation_start(study=study, rater=live2)
    v1, x1, y1 = _send(other, "What do you mean by budget?", configs)
    labeling.tag_add(rater=live2, turn_id=v1.pk, label="clarification")
    labeling.tag_add(rater=live2, turn_id=x1.pk, label="acknowledgment")

    turns = {"u1": u1, "a1": a1, "b1": b1, "u2": u2, "a2": a2, "b2": b2, "v1": v1, "x1": x1, "y1": y1}
    return Fixture(study, live, live2, first, second, turns, configs)


def _label(dashboard: StudyDashboard, name: str) -> Any:
    return next(row for row in dashboard.labels if row.label.name == name)


def test_agreement_figures(study_data, django_assert_max_num_queries):
    # Coded turns (≥ 2 coders), label sets per rater:
    #   u1: r1 ∅, r2 ∅ (covered by review, untagged; r1's pending suggestion does not count)
    #   a1: live {clar}, r1 {clar}, r2 {clar, follow-up} (r2's rejected suggestion does not count)
    #   u2: r1 {rephrase, correction}, r2 {rephrase}
    #   b2: r1 {ack} (accepted suggestion), r2 ∅
    # b1 (live only, off the lived path) and the second conversation have one coder each.
    with django_assert_max_num_queries(12):
        dashboard = study_dashboard(study=study_data.study)
    assert dashboard.conversations == 2
    assert dashboard.coded_turns == 4

    # MASI alpha. Values ∅ ×3, C={clar} ×2, CF ×1, RC ×1, R ×1, A ×1; n = 9.
    # o[∅,∅] = 2 (u1); a1 (m=3): o[C,C] = 1, o[C,CF] = o[CF,C] = 1; o[RC,R] = o[R,RC] = 1; o[A,∅] = o[∅,A] = 1.
    # δ(C,CF) = δ(RC,R) = 2/3 (subset, J = 1/2), δ(A,∅) = 1: D_o = (4/3 + 4/3 + 2) / 9 = 14/27.
    # Expected, unordered pairs n_c n_k δ: ∅ with the 6 non-empty values 3*6 = 18; C-CF 2*1*2/3 = 4/3;
    # C with RC, R, A 3*2 = 6; CF with RC, R, A 3; RC-R 2/3; RC-A 1; R-A 1 → 31, so
    # D_e = 2 * 31 / (9 * 8) = 31/36, alpha = 1 - (14/27) / (31/36) = 1 - 504/837 = 37/93.
    assert dashboard.masi_alpha == pytest.approx(37 / 93)

    # Per label, binary over the coded turns the label applies to.
    clarification = _label(dashboard, "clarification")  # a1 (1,1,1), others all 0: no disagreement
    assert (clarification.alpha, clarification.alpha_turns, clarification.alpha_positive) == (1.0, 4, 1)
    # follow-up: a1 (0,0,1), u1, u2, b2 (0,0): o[0,0] = 1 + 6, o[0,1] = o[1,0] = 1, n_0 = 8, n_1 = 1;
    # D_o = 2/9, D_e = 2*8*1 / (9*8) = 2/9 → alpha 0. acknowledgment (b2 (1,0)) is the same.
    assert _label(dashboard, "follow-up").alpha == pytest.approx(0.0)
    assert _label(dashboard, "acknowledgment").alpha == pytest.approx(0.0)
    rephrase = _label(dashboard, "rephrase")  # user turns only: u1 (0,0), u2 (1,1)
    assert (rephrase.alpha, rephrase.alpha_turns) == (1.0, 2)
    # correction: u1 (0,0), u2 (1,0): D_o = 2/4, D_e = 2*3*1 / (4*3) = 1/2 → 0.
    assert _label(dashboard, "correction").alpha == pytest.approx(0.0)
    over = _label(dashboard, "over-response")  # replies only (a1, b2), never used: D_e = 0 → 1
    assert (over.alpha, over.alpha_turns, over.alpha_positive) == (1.0, 2, 0)

    # Kappa on label sets as categories.
    # r1-r2 on u1, a1, u2, b2: [∅, C, RC, A] vs [∅, CF, R, ∅]: p_o = 1/4, p_e = 1/4 * 2/4 = 1/8,
    # kappa = (1/8) / (7/8) = 1/7. live-r1 on a1: [C] vs [C], p_e = 1 → 1. live-r2: [C] vs [CF] → 0.
    pairs = {frozenset((p.rater_a, p.rater_b)): (p.kappa, p.turns) for p in dashboard.pairs}
    assert pairs[frozenset(("r1", "r2"))] == (pytest.approx(1 / 7), 4)
    assert pairs[frozenset(("live", "r1"))] == (1.0, 1)
    assert pairs[frozenset(("live", "r2"))] == (0.0, 1)
    assert len(pairs) == 3

    # Each user turn is voted by its own rater only (no review votes here).
    assert (dashboard.votes.comparisons, dashboard.votes.alpha) == (0, None)


def test_counts_activity_and_suggestions(study_data):
    dashboard = study_dashboard(study=study_data.study)
    clarification = _label(dashboard, "clarification")  # live on a1 and v1, review by r1 and r2 on a1
    assert (clarification.confirmed, clarification.live, clarification.review) == (4, 2, 2)
    acknowledgment = _label(dashboard, "acknowledgment")  # x1 live, b2 accepted suggestion
    assert (acknowledgment.confirmed, acknowledgment.accepted, acknowledgment.rejected) == (2, 1, 0)
    assert acknowledgment.acceptance == 1.0
    repair = _label(dashboard, "repair")
    assert (repair.confirmed, repair.rejected, repair.acceptance) == (0, 1, 0.0)
    topic_switch = _label(dashboard, "topic-switch")
    assert (topic_switch.pending, topic_switch.acceptance) == (1, None)
    assert _label(dashboard, "no-grounding-act").confirmed == 1

    raters = {r.username: r for r in dashboard.raters}
    assert (raters["live"].conversations, raters["live"].votes, raters["live"].tags) == (1, 2, 2)
    assert raters["live"].median_decision_ms == 2000  # median of 1000 and 3000
    assert (raters["live2"].conversations, raters["live2"].votes, raters["live2"].median_decision_ms) == (1, 0, None)
    assert (raters["r1"].tags, raters["r1"].reviews, raters["r2"].tags, raters["r2"].reviews) == (4, 1, 3, 1)


def _review_vote(reviewer: Any, parent: Turn, **fields: Any) -> Comparison:
    assignment = ReviewAssignment.objects.get(rater=reviewer, conversation_id=parent.conversation_id)
    return labeling.review_vote(
        rater=reviewer, assignment_id=assignment.pk, parent_id=parent.pk, idempotency_key=uuid.uuid4(), **fields
    )


def test_vote_agreement_over_live_and_review_votes(study_data, client, make_user):
    t = study_data.turns
    _review_vote(study_data.first, t["u1"], choice="candidate", chosen_id=t["a1"].pk)
    _review_vote(study_data.second, t["u1"], choice="candidate", chosen_id=t["b1"].pk)
    _review_vote(study_data.first, t["u2"], choice="candidate", chosen_id=t["b2"].pk, strength="slight")
    _review_vote(study_data.second, t["u2"], choice="candidate", chosen_id=t["b2"].pk)
    # Coded by slot: u1: live A (a1), r1 A, r2 B (b1); u2: B (b2) ×3 (strength does not count). Values A ×2,
    # B ×4; n = 6. o[A,A] = 2/2, o[A,B] = o[B,A] = 2/2, o[B,B] = 6/2: D_o = 2/6 = 1/3.
    # D_e = 2 (2*4) / (6*5) = 8/15, alpha = 1 - (1/3)/(8/15) = 1 - 5/8 = 3/8.
    votes = study_dashboard(study=study_data.study).votes
    assert (votes.comparisons, votes.alpha, votes.unanimous) == (2, pytest.approx(3 / 8), 1)

    # r2 changes their mind on u2: a tie (their last vote there counts). u1: A, A, B; u2: B, B, tie. Values
    # A ×2, B ×3, tie; n = 6. o: A-B ×2, B-tie ×2 off the diagonal → D_o = 4/6 = 2/3. Unordered n_c n_k over
    # c ≠ k: AB 6, Atie 2, Btie 3 → 11, D_e = 22/30 = 11/15, alpha = 1 - 10/11 = 1/11.
    _review_vote(study_data.second, t["u2"], choice="tie")
    dashboard = study_dashboard(study=study_data.study)
    assert (dashboard.votes.comparisons, dashboard.votes.alpha, dashboard.votes.unanimous) == (
        2, pytest.approx(1 / 11), 0,
    )  # fmt: skip
    raters = {r.username: r for r in dashboard.raters}
    assert (raters["r1"].votes, raters["r1"].median_decision_ms, raters["live"].votes) == (2, None, 2)
    assert dashboard.coded_turns == 4  # votes are not tags: the label agreement is unchanged

    client.force_login(_researcher(make_user))
    html = client.get(reverse("labeling:dashboard", args=[study_data.study.slug])).content.decode()
    assert "2 user turns voted by several raters" in html and "0.091" in html


def test_grounding_rates_per_model_against_user_baseline(study_data):
    # Replies: m1 a1 (clarification, follow-up), a2, x1 (ack) → 2 of 3; m2 b1 (no-grounding-act is not
    # a grounding act), b2 (ack), y1 → 1 of 3. Users: u1, u2 (rephrase, correction are feedback), v1
    # (clarification) → 1 of 3.
    dashboard = study_dashboard(study=study_data.study)
    rates = {rate.name: (rate.turns, rate.grounded) for rate in dashboard.model_rates}
    assert rates == {"m1": (3, 2), "m2": (3, 1)}
    assert dashboard.model_rates[0].per_100 == pytest.approx(200 / 3)
    baseline = dashboard.user_baseline
    assert (baseline.turns, baseline.grounded) == (3, 1)
    assert baseline.per_100 == pytest.approx(100 / 3)


def test_empty_study_has_no_figures(make_study):
    dashboard = study_dashboard(study=make_study())
    assert dashboard.coded_turns == 0 and dashboard.masi_alpha is None and dashboard.pairs == []
    assert all(row.alpha is None and row.confirmed == 0 for row in dashboard.labels)
    assert dashboard.model_rates == [] and dashboard.user_baseline.per_100 is None


def _researcher(make_user: Any, username: str = "researcher") -> Any:
    """A staff user granted the dashboard permission (and nothing else)."""
    user = make_user(username, is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(codename="view_study_dashboard", content_type__app_label="annotate")
    )
    return user


def test_dashboard_page_needs_the_dashboard_permission(study_data, client, make_user):
    url = reverse("labeling:dashboard", args=[study_data.study.slug])
    client.force_login(_researcher(make_user))
    page = client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert "<svg" in html and "Users (human baseline)" in html and "m1" in html
    assert "No overlapping votes" in html
    assert 'id="masi-alpha">0.398<' in html
    client.force_login(make_user("boss", is_staff=True, is_superuser=True))
    assert client.get(url).status_code == 200

    client.force_login(make_user("staff", is_staff=True))  # staff, but not granted the dashboard
    denied = client.get(url)
    assert denied.status_code == 403
    assert "You cannot open this page" in denied.content.decode()
    client.force_login(study_data.first)  # a rater: the same page, in the app's layout
    denied = client.get(url)
    html = denied.content.decode()
    assert denied.status_code == 403
    assert (
        "You cannot open this page" in html
        and "Can view the study dashboard" in html
        and "Back to your studies" in html
    )
    client.logout()
    assert client.get(url).status_code == 302  # to the login page


def test_dashboard_page_of_an_unknown_study_is_404(client, make_user):
    client.force_login(_researcher(make_user))
    assert client.get(reverse("labeling:dashboard", args=["nope"])).status_code == 404


def test_an_expired_review_codes_nothing(study_data):
    """A reviewer who left mid-review: their assignment expired. Their tags and their silence leave the
    agreement figures (and the tag counts); the figures are those of the other reviewer and the live rater."""
    before = study_dashboard(study=study_data.study)
    ReviewAssignment.objects.filter(rater=study_data.second).update(status=ReviewAssignment.Status.EXPIRED)
    after = study_dashboard(study=study_data.study)
    # Left: a1 coded by live {clar} and r1 {clar}; u1, u2, b2 by r1 alone (one coder: not coded).
    assert (before.coded_turns, after.coded_turns) == (4, 1)
    assert {frozenset((p.rater_a, p.rater_b)) for p in after.pairs} == {frozenset(("live", "r1"))}
    assert _label(after, "clarification").review == _label(before, "clarification").review - 1
    assert _label(after, "follow-up").confirmed == _label(before, "follow-up").confirmed - 1


# --- snapshots: the page reads stored figures, a task computes them ----------------------------------


def _same(a: Any, b: Any) -> bool:
    """Equal JSON-like data, floats to 1e-9."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-9
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_numpy_maths_give_the_reference_figures(study_data):
    t = study_data.turns
    _review_vote(study_data.first, t["u1"], choice="candidate", chosen_id=t["a1"].pk)
    _review_vote(study_data.second, t["u1"], choice="tie")
    fast = dashboard_to_json(study_dashboard(study=study_data.study))
    slow = dashboard_to_json(study_dashboard(study=study_data.study, reference=True))
    assert _same(fast, slow)
    assert fast["votes"]["alpha"] is not None and fast["masi_alpha"] == pytest.approx(37 / 93)


@pytest.mark.parametrize("include_excluded", [False, True])
def test_a_snapshot_reads_back_as_the_fresh_computation(study_data, include_excluded):
    fresh = study_dashboard(study=study_data.study, include_excluded=include_excluded)
    # Through JSON text, as PostgreSQL stores it...
    assert dashboard_from_json(json.loads(json.dumps(dashboard_to_json(fresh))), study_data.study) == fresh
    # ... and through the snapshot row the task writes.
    stored = labeling.dashboard_refresh(study_id=study_data.study.pk, include_excluded=include_excluded)
    assert stored is not None and stored.computed_at is not None
    stored.refresh_from_db()
    assert dashboard_from_json(stored.data, study_data.study) == fresh


@pytest.fixture
def sent(monkeypatch) -> list[tuple[Any, ...]]:
    """The tasks labeling.services sends (none reaches a broker)."""
    found: list[tuple[Any, ...]] = []
    monkeypatch.setattr(labeling, "task_send", lambda name, *args: found.append((name, *args)))
    return found


def _age(study: Study, seconds: float, include_excluded: bool = False) -> None:
    """Make the stored snapshot (and its last request) `seconds` old."""
    then = timezone.now() - timedelta(seconds=seconds)
    DashboardSnapshot.objects.filter(study=study, include_excluded=include_excluded).update(
        computed_at=then, refresh_requested_at=then
    )


def test_the_page_shows_the_snapshot_as_of_its_time_without_reading_figures(
    study_data, client, make_user, django_assert_max_num_queries, sent
):
    url = reverse("labeling:dashboard", args=[study_data.study.slug])
    client.force_login(_researcher(make_user))
    first = client.get(url).content.decode()  # no snapshot yet, a small study: computed on the request
    assert "Figures as of" in first and 'id="n-coded">4<' in first and sent == []
    # New work after the snapshot does not show until a refresh; the page reads the stored figures only.
    labeling.tag_add(rater=study_data.live2, turn_id=study_data.turns["y1"].pk, label="clarification")
    with django_assert_max_num_queries(8):
        page = client.get(url)
    html = page.content.decode()
    assert page.status_code == 200 and "Refresh now" in html and " s ago)" in html
    assert 'id="masi-alpha">0.398<' in html and _label_count(html, "clarification") == "4"
    assert sent == []  # fresh: no refresh asked for


def _label_count(html: str, name: str) -> str:
    row = html.split(f'id="label-{name}"', 1)[1]
    return row.split("<td>", 3)[3].split("<", 1)[0]  # the third cell: confirmed


def test_a_stale_snapshot_asks_for_one_refresh(
    study_data, client, make_user, sent, settings, django_capture_on_commit_callbacks
):
    settings.DASHBOARD_MAX_AGE_SECONDS = 60
    study = study_data.study
    url = reverse("labeling:dashboard", args=[study.slug])
    client.force_login(_researcher(make_user))
    labeling.dashboard_refresh(study_id=study.pk, include_excluded=False)
    _age(study, 120)
    with django_capture_on_commit_callbacks(execute=True):
        pages = [client.get(url).content.decode() for _ in range(3)]
    assert sent == [("labeling.tasks.dashboard_refresh_task", study.pk, False)]  # three views, one task
    assert "(120 s ago)" in pages[0] and "a refresh is under way" in pages[2]

    # The worker runs it: the page shows the new figures, and a fresh snapshot asks for nothing.
    labeling.tag_add(rater=study_data.live2, turn_id=study_data.turns["y1"].pk, label="clarification")
    dashboard_refresh_task(study.pk, False)
    with django_capture_on_commit_callbacks(execute=True):
        html = client.get(url).content.decode()
    assert _label_count(html, "clarification") == "5" and "under way" not in html and len(sent) == 1


def test_refresh_now_needs_the_permission_and_is_idempotent(
    study_data, client, make_user, sent, django_capture_on_commit_callbacks
):
    study = study_data.study
    refresh = reverse("labeling:dashboard_refresh", args=[study.slug])
    client.force_login(study_data.first)
    assert client.post(refresh).status_code == 403
    client.force_login(_researcher(make_user))
    assert client.get(refresh).status_code == 405
    with django_capture_on_commit_callbacks(execute=True):
        answers = [client.post(refresh, {"include_excluded": "1"}) for _ in range(2)]
    assert [a.status_code for a in answers] == [302, 302]
    assert answers[0]["Location"] == reverse("labeling:dashboard", args=[study.slug]) + "?include_excluded=1"
    assert sent == [("labeling.tasks.dashboard_refresh_task", study.pk, True)]  # the second click: nothing sent
    # Served and a few seconds later, a click asks again.
    dashboard_refresh_task(study.pk, True)
    DashboardSnapshot.objects.filter(study=study).update(
        refresh_requested_at=timezone.now() - timedelta(seconds=10), computed_at=timezone.now() - timedelta(seconds=9)
    )
    with django_capture_on_commit_callbacks(execute=True):
        client.post(refresh, {"include_excluded": "1"})
    assert len(sent) == 2


def test_include_excluded_has_its_own_snapshot(study_data, client, make_user):
    url = reverse("labeling:dashboard", args=[study_data.study.slug])
    client.force_login(_researcher(make_user))
    client.get(url)
    client.get(url, {"include_excluded": "1"})
    snapshots = DashboardSnapshot.objects.filter(study=study_data.study).order_by("include_excluded")
    assert [(s.include_excluded, s.data["include_excluded"]) for s in snapshots] == [(False, False), (True, True)]
    page = client.get(url, {"include_excluded": "1"}).content.decode()
    assert 'name="include_excluded" value="1"' in page  # "Refresh now" refreshes this one


def test_a_large_study_without_snapshot_waits_for_the_worker(
    study_data, client, make_user, sent, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(dashboard_views, "DASHBOARD_INLINE_MAX_CONVERSATIONS", 1)  # 2 conversations: "large"
    study = study_data.study
    url = reverse("labeling:dashboard", args=[study.slug])
    client.force_login(_researcher(make_user))
    with django_capture_on_commit_callbacks(execute=True):
        html = client.get(url).content.decode()
        polled = client.get(url, headers={"HX-Request": "true"})
    assert "Computing the figures" in html and 'hx-trigger="every 2s"' in html and "Figures as of" not in html
    assert polled.status_code == 204  # still computing
    assert sent == [("labeling.tasks.dashboard_refresh_task", study.pk, False)]
    dashboard_refresh_task(study.pk, False)
    ready = client.get(url, headers={"HX-Request": "true"})
    assert ready.status_code == 200 and ready["HX-Refresh"] == "true"
    assert "Figures as of" in client.get(url).content.decode()


def test_a_real_worker_computes_the_snapshot(start_worker, make_study, make_user, client):
    study = make_study(overlap=2)
    finished_conversation(study, make_user("good"))
    start_worker(concurrency=1)
    # When a refresh is asked for (committed: the task is sent to the broker)
    assert labeling.dashboard_refresh_request(study=study, include_excluded=False)
    # Then the worker stores the figures, and the page shows them
    wait_until(lambda: DashboardSnapshot.objects.filter(study=study, data__isnull=False).exists(), timeout=60)
    client.force_login(_researcher(make_user))
    html = client.get(reverse("labeling:dashboard", args=[study.slug])).content.decode()
    assert "Figures as of" in html and 'id="n-conversations">1<' in html
