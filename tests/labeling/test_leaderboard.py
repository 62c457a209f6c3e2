"""The arena leaderboard: the maths against hand-computed cases and a second implementation, the battles and
rates read from a study, the page, its downloads and its refresh."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np
import pytest
from celery import current_app
from django.contrib.auth.models import Permission

import labeling.tasks  # noqa: F401  (registers the task names)
from annotate.models import Comparison, Conversation, Participant, Study, Turn
from labeling import leaderboard as lb
from labeling import leaderboard_data as data
from labeling.models import Label, Tag
from workers.models import ModelConfig

# --- the maths ------------------------------------------------------------------------------------


def _battles(*groups: tuple[int, int, int, int]) -> lb.Aggregated:
    """(model a, model b, outcome, how many) groups as aggregated battles over 3 models."""
    a = np.concatenate([[g[0]] * g[3] for g in groups])
    b = np.concatenate([[g[1]] * g[3] for g in groups])
    o = np.concatenate([[g[2]] * g[3] for g in groups])
    return lb.aggregate(a, b, o, 3)


def test_two_models_differ_by_400_log10_of_their_odds():
    # Given 30 wins of model 0 over model 1 and 10 the other way: the MLE is p = 3/4, odds 3:1.
    ratings = lb.bt_ratings(_battles((0, 1, lb.A_WINS, 30), (1, 0, lb.A_WINS, 10)))
    assert ratings[0] - ratings[1] == pytest.approx(400 * math.log10(3), abs=1e-3)  # 190.85
    assert (ratings[0] + ratings[1]) / 2 == pytest.approx(1000)
    assert math.isnan(ratings[2])  # no battles: no rating


def test_ties_and_both_bad_count_as_half_a_win_each():
    # 30 wins, 10 losses, 2 ties, 2 both bad: 32 against 12 half-win units.
    ratings = lb.bt_ratings(
        _battles((0, 1, lb.A_WINS, 30), (0, 1, lb.B_WINS, 10), (0, 1, lb.TIE, 2), (1, 0, lb.BOTH_BAD, 2))
    )
    assert ratings[0] - ratings[1] == pytest.approx(400 * math.log10(32 / 12), abs=1e-3)
    only_ties = lb.bt_ratings(_battles((0, 1, lb.TIE, 5), (1, 0, lb.BOTH_BAD, 5)))
    assert only_ties[0] == pytest.approx(only_ties[1])


def test_aggregate_puts_the_lower_index_first_and_swaps_the_winner_with_it():
    data_ = lb.aggregate(np.array([2, 0, 2]), np.array([0, 2, 1]), np.array([lb.A_WINS, lb.B_WINS, lb.TIE]), 3)
    assert data_.pairs.tolist() == [[0, 2], [1, 2]]
    assert data_.counts.tolist() == [[0, 2, 0], [0, 0, 1]]  # model 2 won twice against 0; one tie with 1
    with pytest.raises(ValueError):
        lb.aggregate(np.array([1]), np.array([1]), np.array([lb.A_WINS]), 3)


def _mm_ratings(pairs: np.ndarray, counts: np.ndarray, n: int) -> np.ndarray:
    """A second implementation: Zermelo / Hunter's MM iteration on the Bradley-Terry likelihood, ties as halves:
    p_i ← W_i / Σ_j n_ij / (p_i + p_j), then 400·log10 p anchored at a mean of 1000."""
    wins = np.zeros((n, n))
    for (i, j), (wi, wj, ties) in zip(pairs, counts, strict=True):
        wins[i, j] += wi + ties / 2
        wins[j, i] += wj + ties / 2
    games = wins + wins.T
    p = np.ones(n)
    for _ in range(20000):
        new = wins.sum(axis=1) / (games / (p[:, None] + p[None, :])).sum(axis=1)
        new /= np.exp(np.log(new).mean())
        if np.abs(new - p).max() < 1e-13:
            break
        p = new
    ratings = 400 * np.log10(p)
    return ratings - ratings.mean() + 1000


def test_the_fit_matches_an_mm_iteration_on_random_battles():
    rng = np.random.default_rng(7)
    strength = rng.normal(0, 150, 6)
    a = rng.integers(0, 6, 20000)
    b = (a + rng.integers(1, 6, 20000)) % 6
    p = 1 / (1 + 10 ** ((strength[b] - strength[a]) / 400))
    u = rng.random(20000)
    outcome = np.where(u < p - 0.05, lb.A_WINS, np.where(u < p + 0.05, lb.TIE, lb.B_WINS))
    battles = lb.aggregate(a, b, outcome, 6)
    assert lb.bt_ratings(battles) == pytest.approx(_mm_ratings(battles.pairs, battles.counts, 6), abs=0.05)


def test_a_named_anchor_sits_at_1000_and_keeps_the_gaps():
    battles = _battles((0, 1, lb.A_WINS, 20), (1, 2, lb.A_WINS, 15), (2, 0, lb.A_WINS, 5), (1, 0, lb.A_WINS, 8))
    mean_anchored, anchored = lb.bt_ratings(battles), lb.bt_ratings(battles, anchor=2)
    assert anchored[2] == pytest.approx(1000)
    assert anchored - anchored[2] == pytest.approx(mean_anchored - mean_anchored[2], abs=1e-6)


def test_the_bootstrap_interval_holds_the_estimate_and_narrows_with_more_battles():
    small = _battles((0, 1, lb.A_WINS, 30), (0, 1, lb.B_WINS, 20), (1, 2, lb.A_WINS, 30), (1, 2, lb.B_WINS, 20))
    large = lb.Aggregated(pairs=small.pairs, counts=small.counts * 100, n_models=3)
    widths = []
    for battles in (small, large):
        point = lb.bt_ratings(battles)
        lower, upper = lb.bt_bootstrap(battles, rounds=300, seed=1)
        assert np.all(lower <= point) and np.all(point <= upper)
        widths.append(upper - lower)
    assert np.all(widths[1] < widths[0] / 5)  # 100× the battles: about a tenth of the width


def test_the_bootstrap_is_reproducible_with_its_seed():
    battles = _battles((0, 1, lb.A_WINS, 30), (0, 1, lb.B_WINS, 20), (1, 2, lb.TIE, 10), (2, 0, lb.A_WINS, 5))
    first = lb.bt_bootstrap(battles, rounds=100, seed=3)
    again = lb.bt_bootstrap(battles, rounds=100, seed=3)
    other = lb.bt_bootstrap(battles, rounds=100, seed=4)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def _rater_battles(per_rater: list[tuple[int, int]]) -> tuple[lb.Aggregated, np.ndarray]:
    """Model 0 against model 1: each rater's (wins of 0, wins of 1), as one row per battle; the aggregate and the
    counts per rater."""
    rows = [(0, 1, lb.A_WINS if k < wins0 else lb.B_WINS, rater)
            for rater, (wins0, wins1) in enumerate(per_rater) for k in range(wins0 + wins1)]  # fmt: skip
    a, b, outcome, rater = (np.array(column) for column in zip(*rows, strict=True))
    data = lb.aggregate(a, b, outcome, 2)
    return data, lb.cluster_counts(data, a, b, outcome, np.ones(len(a), dtype=np.int64), rater)


def test_cluster_counts_split_the_aggregate_by_rater():
    data, clusters = _rater_battles([(30, 0), (0, 30), (10, 10)])
    assert clusters.shape == (3, 1, 3)
    assert clusters[:, 0, :2].tolist() == [[30, 0], [0, 30], [10, 10]]
    assert np.array_equal(clusters.sum(axis=0), data.counts)


def test_resampling_raters_widens_the_interval_when_raters_disagree_among_themselves():
    # Four raters each with a strong taste, two each way, 50 votes each: 100–100 in all. Resampling battles sees
    # 200 independent votes (a narrow interval around 0); resampling raters sees four opinions (a wide one).
    data, clusters = _rater_battles([(45, 5), (5, 45), (45, 5), (5, 45)])
    battle_lower, battle_upper = lb.bt_bootstrap(data, rounds=300, seed=2)
    rater_lower, rater_upper = lb.bt_bootstrap_clustered(data, clusters, rounds=300, seed=2)
    assert (rater_upper - rater_lower)[0] > 3 * (battle_upper - battle_lower)[0]
    point = lb.bt_ratings(data)
    assert np.all(rater_lower <= point + 1e-6) and np.all(point <= rater_upper + 1e-6)
    # Raters who agree with each other: the two intervals are alike.
    same, same_clusters = _rater_battles([(25, 25)] * 4)
    lower, upper = lb.bt_bootstrap_clustered(same, same_clusters, rounds=300, seed=2)
    assert np.allclose(lower, upper)  # identical raters: every resample of them is the same 100 votes
    battle_lower, battle_upper = lb.bt_bootstrap(same, rounds=300, seed=2)
    assert (battle_upper - battle_lower)[0] > 0


def test_resampling_raters_needs_two_of_them():
    data, clusters = _rater_battles([(30, 10)])
    lower, upper = lb.bt_bootstrap_clustered(data, clusters, rounds=50, seed=0)
    assert np.isnan(lower).all() and np.isnan(upper).all()


def test_ratings_table_records_and_win_matrix():
    battles = _battles((0, 1, lb.A_WINS, 6), (0, 1, lb.B_WINS, 2), (0, 1, lb.TIE, 2), (2, 1, lb.A_WINS, 1))
    rows = lb.ratings_table(battles, rounds=50)
    by_model = {r.model: r for r in rows}
    assert (by_model[0].wins, by_model[0].losses, by_model[0].ties, by_model[0].battles) == (6, 2, 2, 10)
    assert by_model[1].battles == 11 and by_model[1].win_rate == pytest.approx((2 + 1) / 11)
    assert [r.rating for r in rows] == sorted((r.rating for r in rows), reverse=True)
    count, rate = lb.win_matrix(battles)
    assert count[0, 1] == count[1, 0] == 10
    assert rate[0, 1] == pytest.approx(0.7) and rate[1, 0] == pytest.approx(0.3)
    assert math.isnan(rate[0, 2])


def test_wilson_interval_known_values():
    low, high = lb.wilson(5, 10)
    assert (low, high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert lb.wilson(0, 10)[0] == 0.0 and lb.wilson(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert lb.wilson(0, 0) == (None, None)
    assert lb.Rate(hits=5, turns=10).per_100 == 50


# --- a study's battles and rates ------------------------------------------------------------------


class Builder:
    """Turns and votes written straight to the database: the shapes the rating session makes."""

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self.depth = 0
        self.head: Turn | None = None

    def message(self, *models: ModelConfig, **overrides: dict[str, Any]) -> tuple[Turn, list[Turn]]:
        user = Turn.objects.create(
            conversation=self.conversation, parent=self.head, role=Turn.Role.USER, depth=self.depth, text="hi"
        )
        replies = [
            Turn.objects.create(
                conversation=self.conversation,
                parent=user,
                role=Turn.Role.ASSISTANT,
                depth=self.depth + 1,
                position=slot,
                model_config=model,
                text=f"reply {slot}",
                **({"status": Turn.Status.DONE} | overrides.get(str(slot), {})),
            )
            for slot, model in enumerate(models)
        ]
        return user, replies

    def vote(self, user: Turn, choice: str, chosen: Turn | None = None, **fields: Any) -> Comparison:
        fields.setdefault("rater", self.conversation.rater)
        vote = Comparison.objects.create(
            conversation=self.conversation, parent=user, choice=choice, chosen=chosen, **fields
        )
        if fields.get("task", Comparison.Task.LIVE) == Comparison.Task.LIVE:
            self.head = chosen or Turn.objects.filter(parent=user).first()
            self.depth += 2
        return vote


@pytest.fixture
def arena(make_config, make_study, make_conversation, make_user) -> dict[str, Any]:
    """Three models; one conversation with a 3-way vote, a tie, a flagged battle, a same-model pair, a failed
    reply, a review vote; and an excluded rater's conversation."""
    m1, m2, m3 = make_config("m1"), make_config("m2"), make_config("m3")
    study = make_study(configs=[m1, m2, m3])
    conversation = make_conversation(study)
    b = Builder(conversation)
    # turn 1: A (m1) chosen among m1, m2, m3: battles m1>m2 and m1>m3, m2–m3 not compared
    user1, (a, _, _) = b.message(m1, m2, m3)
    b.vote(user1, "candidate", a)
    reviewer = make_user()
    # turn 2: a tie between m2 and m1; a reviewer says m2 (a review vote is a battle too)
    user2, (x, y) = b.message(m2, m1)
    b.vote(user2, "tie", x)
    b.vote(user2, "candidate", x, task=Comparison.Task.REVIEW, rater=reviewer)
    # turn 3: the m2 reply named its model: flagged, left out by default
    user3, (_, leak) = b.message(m1, m2, **{"1": {"identity_leak": True}})
    b.vote(user3, "candidate", leak)
    # turn 4: two m1 replies (no battle) and a failed m3 reply (not judged)
    user4, (same, _, _) = b.message(m1, m1, m3, **{"2": {"status": Turn.Status.FAILED}})
    b.vote(user4, "candidate", same)
    # an excluded rater: m3 beats m1
    banned = make_user()
    other = Builder(make_conversation(study, banned))
    user5, (_, win) = other.message(m1, m3)
    other.vote(user5, "candidate", win)
    Participant.objects.update_or_create(study=study, user=banned, defaults={"excluded": True})
    return {"study": study, "m": (m1, m2, m3), "b": b, "turns": (user1, user2, user3, user4), "replies": (a, x, y)}


def _pairs(figures: dict[str, Any]) -> dict[tuple[str, str], tuple[int, int, int]]:
    return {(p["model_a"], p["model_b"]): (p["a_wins"], p["b_wins"], p["ties"]) for p in figures["pairs"]}


@pytest.mark.django_db
def test_battles_follow_the_arena_rule_and_leave_out_flagged_and_excluded(arena):
    figures = data.leaderboard_compute(study=arena["study"], rounds=20)
    # m1 beat m2 (turn 1); m1–m2 tied live (turn 2) and m2 beat m1 in review; m1 beat m3 (turn 1)
    assert _pairs(figures) == {("m1", "m2"): (1, 1, 1), ("m1", "m3"): (1, 0, 0)}
    assert figures["battles"] == 4 and figures["review_battles"] == 1 and figures["flagged_battles"] == 1

    with_all = data.leaderboard_compute(study=arena["study"], rounds=20, include_flagged=True, include_excluded=True)
    assert _pairs(with_all) == {("m1", "m2"): (1, 2, 1), ("m1", "m3"): (1, 1, 0)}


@pytest.mark.django_db
def test_a_vote_that_failed_an_attention_check_is_no_battle(arena):
    Comparison.objects.filter(parent=arena["turns"][0]).update(attention_passed=False)
    figures = data.leaderboard_compute(study=arena["study"], rounds=0)
    assert _pairs(figures) == {("m1", "m2"): (0, 1, 1)}


@pytest.mark.django_db
def test_win_rates_by_user_turn_number(arena):
    figures = data.leaderboard_compute(study=arena["study"], rounds=0)
    depth = {(r["model"], r["turn"]): (r["battles"], r["win_rate"]) for r in figures["depth"]}
    assert depth[("m1", "1")] == (2, 1.0)  # both battles of turn 1 won
    assert depth[("m1", "2")] == (2, 0.25)  # a tie and a review loss at turn 2
    assert depth[("m2", "2")] == (2, 0.75)
    assert data.depth_bucket(0) == 1 and data.depth_bucket(2) == 2 and data.depth_bucket(40) == data.DEPTH_TAIL


@pytest.mark.django_db
def test_grounding_and_feedback_rates_against_the_human_baseline(arena):
    grounding = Label.objects.filter(kind=Label.Kind.GROUNDING).order_by("pk").first()
    negative = Label.objects.filter(kind=Label.Kind.FEEDBACK, polarity__lt=0).order_by("pk").first()
    assert grounding is not None and negative is not None
    user1, user2, _, _ = arena["turns"]
    a, x, _ = arena["replies"]
    rater = arena["b"].conversation.rater
    Tag.objects.create(turn=a, label=grounding, rater=rater)  # m1's chosen reply at turn 1
    Tag.objects.create(turn=user2, label=negative, rater=rater)  # the user's reaction to it
    Tag.objects.create(turn=user1, label=grounding, rater=rater)  # the user's own grounding act
    Tag.objects.create(turn=x, label=grounding, rater=rater, status=Tag.Status.REJECTED)  # not confirmed
    rates = {
        (r["model"], r["kind"], r["label"]): r
        for r in data.leaderboard_compute(study=arena["study"], rounds=0)["rates"]
    }
    m1 = rates[("m1", "grounding", "any")]
    # m1's finished sampled replies, excluded rater's left out: turn 1, 2, 3 and two at turn 4
    assert (m1["hits"], m1["turns"]) == (1, 5) and m1["per_100"] == pytest.approx(20)
    assert m1["lower"] < 20 < m1["upper"]
    assert rates[("m1", "grounding", grounding.name)]["hits"] == 1
    assert rates[("m2", "grounding", "any")]["hits"] == 0
    # the lived m1 reply at turn 1 was answered by user turn 2, with a negative feedback tag
    assert rates[("m1", "feedback", "negative")]["hits"] == 1
    assert rates[("m1", "feedback", negative.name)]["hits"] == 1
    baseline = rates[(data.BASELINE, "grounding", "any")]
    assert (baseline["hits"], baseline["turns"], baseline["baseline"]) == (1, 4, True)


# --- the page -------------------------------------------------------------------------------------


def _researcher(make_user: Any) -> Any:
    user = make_user(is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="annotate", codename="view_study_dashboard")
    )
    return user


@pytest.mark.django_db
def test_the_page_needs_the_dashboard_permission(arena, client, make_user):
    url = f"/studies/{arena['study'].slug}/leaderboard/"
    assert client.get(url).status_code == 302 and "/login" in client.get(url)["Location"]
    client.force_login(make_user(is_staff=True))
    assert client.get(url).status_code == 403
    client.force_login(_researcher(make_user))
    response = client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="ratings-table"' in html and "m1" in html and 'id="heat"' in html and 'id="depth-table"' in html


@pytest.mark.django_db
def test_csv_and_json_downloads(arena, client, make_user):
    client.force_login(_researcher(make_user))
    url = f"/studies/{arena['study'].slug}/leaderboard/"
    figures = client.get(url, {"format": "json"}).json()
    assert [r["model"] for r in figures["ratings"]][0] == "m1"
    assert figures["rounds"] == data.ROUNDS and figures["include_flagged"] is False
    # Raters whose votes count (the live rater and the reviewer; not the excluded one): the second interval.
    assert figures["raters"] == 2
    assert all(
        r["rater_lower"] is None or r["rater_lower"] <= r["rating"] + 1e-6 <= r["rater_upper"] + 2e-6
        for r in figures["ratings"]
    )
    response = client.get(url, {"format": "csv", "table": "ratings"})
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert tuple(rows[0]) == data.CSV_COLUMNS["ratings"]
    assert {r["model"] for r in rows} == {"m1", "m2", "m3"}
    for table in data.TABLES:
        assert client.get(url, {"format": "csv", "table": table}).status_code == 200
    assert client.get(url, {"format": "csv", "table": "nope"}).status_code == 400
    flagged = client.get(url, {"format": "json", "include_flagged": "1"}).json()
    assert flagged["battles"] == figures["battles"] + 1


@pytest.mark.django_db
def test_the_page_shows_the_cache_and_refresh_runs_the_task(
    arena, client, make_user, monkeypatch, django_capture_on_commit_callbacks
):
    study: Study = arena["study"]
    client.force_login(_researcher(make_user))
    url = f"/studies/{study.slug}/leaderboard/"
    before = client.get(url, {"format": "json"}).json()
    # a new battle is not on the page until a refresh: the figures come from the cache
    b = arena["b"]
    m1, m2, _ = arena["m"]
    user, (_, win) = b.message(m1, m2)
    b.vote(user, "candidate", win)
    assert client.get(url, {"format": "json"}).json()["battles"] == before["battles"]

    sent: list[tuple[str, tuple[Any, ...]]] = []

    def run(name: str, *args: Any, queue: str | None = None) -> None:
        sent.append((name, args))
        current_app.tasks[name].apply(args=args)

    monkeypatch.setattr(data, "task_send", run)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"{url}refresh/")
        client.post(f"{url}refresh/")  # a second click while the first is pending sends nothing
    assert response.status_code == 302 and response["Location"] == url
    assert sent == [("labeling.tasks.leaderboard_refresh_task", (study.pk, False, False))]
    assert client.get(url, {"format": "json"}).json()["battles"] == before["battles"] + 1


def _luminance(hsl: str) -> float:
    import colorsys
    import re

    hue, sat, light = (float(x) for x in re.findall(r"[\d.]+", hsl))
    channels = colorsys.hls_to_rgb(hue / 360, light / 100, sat / 100)
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def test_heat_map_cells_keep_the_text_readable_at_0_and_100_percent():
    from labeling.views.leaderboard import heat_map

    figures = {
        "ratings": [{"model": "x"}, {"model": "y"}],
        "pairs": [{"model_a": "x", "model_b": "y", "a_win_rate": 1.0, "battles": 4}],
    }
    text = (
        0.2126 * (0x1D / 255 / 12.92)
        + 0.7152 * (((0x23 / 255 + 0.055) / 1.055) ** 2.4)
        + 0.0722 * (((0x30 / 255 + 0.055) / 1.055) ** 2.4)
    )  # the page's text colour, #1d2330
    cells = [c for row in heat_map(figures)["rows"] for c in row["cells"] if c["rate"] is not None]
    assert {c["rate"] for c in cells} == {0.0, 1.0}
    for cell in cells:
        assert (_luminance(cell["colour"]) + 0.05) / (text + 0.05) >= 4.5, cell["colour"]
