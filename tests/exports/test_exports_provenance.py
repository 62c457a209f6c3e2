"""Provenance in exports: a rater's rewrite is human text, never a model's output (issue 13, item 5),
and the tree format's ranks, verdicts, parameters and rater filter (item 7)."""

from __future__ import annotations

from typing import Any

import pyarrow.parquet as pq
import pytest

from core.errors import ActionRefused
from exports import formats
from tests.exports.export_study import build_export_study, export
from workers.params import PARAM_NAMES

pytestmark = pytest.mark.django_db

REWRITE = "A dinosaur party for a six-year-old: cake, fossils, games."


@pytest.fixture
def story() -> dict[str, Any]:
    return build_export_study()


def test_a_rewrite_in_a_pair_is_attributed_to_no_model_and_marked_human(story, tmp_path):
    rows, _ = export(tmp_path, format="dpo")
    rewrites = [r for r in rows if r["chosen_is_rewrite"]]
    assert len(rewrites) == 2
    for row in rewrites:
        # Stored with its base reply's model config (model-plain), but the rater wrote it.
        assert (row["chosen_model"], row["chosen_source"], row["rejected_source"]) == (None, "human", "model")
    assert {(r["chosen_source"], r["rejected_source"]) for r in rows if not r["chosen_is_rewrite"]} == {
        ("model", "model")
    }


@pytest.mark.parametrize("fmt", ["dpo", "reward", "segments"])
def test_a_model_filter_never_selects_a_rewrite_as_that_models_text(story, tmp_path, fmt):
    # Before: the rewrite of a model-plain reply passed as model-plain against a3A.
    with pytest.raises(ActionRefused, match=f"give no `{fmt}` rows"):
        export(tmp_path, format=fmt, models=("model-plain",))


def test_kto_and_multiturn_mark_the_rewrite_human_and_drop_it_under_a_model_filter(story, tmp_path):
    kto, _ = export(tmp_path, "kto", format="kto")
    rewrite = next(r for r in kto if r["is_rewrite"])
    assert (rewrite["model"], rewrite["source"]) == (None, "human")
    assert {r["source"] for r in kto if not r["is_rewrite"]} == {"model"}
    plain, _ = export(tmp_path, "kto-plain", format="kto", models=("model-plain",))
    assert plain and REWRITE not in [r["completion"][0]["content"] for r in plain]
    assert {(r["model"], r["source"]) for r in plain} == {("model-plain", "model")}

    multiturn, _ = export(tmp_path, "mt", format="multiturn", file_format="parquet")
    assert [(r["model"], r["source"]) for r in multiturn[:3]] == [
        ("model-clarify", "model"),
        ("model-clarify", "model"),
        (None, "human"),
    ]
    plain_mt, _ = export(tmp_path, "mt-plain", format="multiturn", models=("model-plain",))
    assert [r["completion"][0]["content"] for r in plain_mt] == ["Hi."]  # carol's lived reply only


def test_tree_says_who_wrote_each_turn(story, tmp_path):
    rows, _ = export(tmp_path, format="tree")
    turns = {t["turn_id"]: t for t in rows[0]["turns"]}
    got = {key: (turns[story[key].pk]["model"], turns[story[key].pk]["source"]) for key in ("u1", "a3A", "r3")}
    assert got == {"u1": (None, "human"), "a3A": ("model-plain", "model"), "r3": (None, "human")}


def test_tree_ranks_all_bad_below_a_tie_and_says_which_it_was(story, tmp_path):
    rows, _ = export(tmp_path, format="tree")
    first, second = rows
    turns = {t["turn_id"]: t for t in first["turns"]}
    ranked = {k: (turns[story[k].pk]["rank"], turns[story[k].pk]["verdict"]) for k in ("a1A", "a1B", "a3A", "r3")}
    assert ranked == {"a1A": (1, "not_chosen"), "a1B": (0, "chosen"), "a3A": (2, "all_bad"), "r3": (0, "rewrite")}
    assert [(t["rank"], t["verdict"]) for t in second["turns"]] == [(None, None), (0, "tie"), (0, "tie")]
    # All bad without a rewrite: rank 1, not the 0 a tie gets.
    story["v3"].continued_from = None
    story["v3"].save(update_fields=["continued_from"])
    rows, _ = export(tmp_path, "again", format="tree")
    turns = {t["turn_id"]: t for t in rows[0]["turns"]}
    assert (turns[story["a3A"].pk]["rank"], turns[story["a3B"].pk]["rank"]) == (1, 1)


@pytest.mark.parametrize("file_format", ["jsonl", "parquet"])
def test_tree_params_are_an_object_with_every_parameter(story, tmp_path, file_format):
    rows, _ = export(tmp_path, format="tree", file_format=file_format)
    turns = {t["turn_id"]: t for t in rows[0]["turns"]}
    params = turns[story["a1A"].pk]["params"]
    assert isinstance(params, dict) and params["temperature"] == 0.7 and params["max_new_tokens"] == 96
    assert params["stop"] is None
    assert turns[story["u1"].pk]["params"] is None and turns[story["r3"].pk]["params"] is None


def test_tree_params_cover_the_parameters_a_config_may_set():
    assert set(formats.PARAMS_TYPES) == PARAM_NAMES
    assert formats.generation_params({"temperature": 1, "stop": ["\n"]}) == {
        "temperature": 1.0,
        "top_p": None,
        "max_new_tokens": None,
        "min_new_tokens": None,
        "repetition_penalty": None,
        "stop": ["\n"],
    }


def test_a_rater_filter_keeps_that_raters_tags_as_well_as_votes(story, tmp_path):
    alice = f"rater-{story['users']['alice'].pk}"
    rows, out = export(tmp_path, format="tree", raters=("alice",), file_format="parquet")
    assert pq.read_table(out / "tree.parquet").num_rows == 1
    tree = rows[0]
    assert {v["rater"] for v in tree["votes"]} == {alice}
    assert {tag["rater"] for t in tree["turns"] for tag in t["tags"]} == {alice}  # bob's review tags left out
    dpo, _ = export(tmp_path, "dpo", format="dpo", raters=("alice",))
    first = dpo[0]
    assert first["chosen_tags"] == ["clarification"]  # alice's own tag
    # Without the filter, bob's review tags are there.
    everyone, _ = export(tmp_path, "all", format="tree")
    assert len({tag["rater"] for t in everyone[0]["turns"] for tag in t["tags"]}) == 2
