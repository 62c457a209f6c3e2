"""Rows of each export format, built from one conversation at a time (schemas: docs/exports.md).

Each `<format>_rows(conv, sel)` yields plain dicts whose key order is the column order, and
`SCHEMAS[format]` is the matching Arrow schema used for Parquet. Pure functions of the loaded
data: no queries, no clocks, so the output is reproducible.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pyarrow as pa

from annotate.tree import finished_candidates, slot_letter
from exports.selection import ConversationData, Selection, TagRow, TurnRow, VoteRow

Row = dict[str, Any]

# A vote's strength as a number (`strength_score`): null where the study did not ask.
STRENGTH_SCORE = {"clear": 1.0, "slight": 0.5}
# How much a vote weighs in a pair's margin and in multiturn's immediate preference: a vote without a
# strength question is a plain, whole preference.
STRENGTH_WEIGHT = {**STRENGTH_SCORE, "": 1.0}
# The outcome survey as a number in [-1, 1]: goal reached, and understanding 1–5 centred on 3.
GOAL_SCORE = {"yes": 1.0, "partly": 0.0, "no": -1.0}


def iso(value: dt.datetime | None) -> str | None:
    """UTC, always with milliseconds: a JSON reader then never guesses some rows to be timestamps."""
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# A failed reply's error is written for staff (it may name the model server, its address and its
# reply); a dataset may be published, so addresses are blanked and the text is kept short.
_ADDRESS = re.compile(r"[a-z][a-z0-9+.-]*://\S+|\b(?:[\w-]+\.)*[\w-]+:\d{2,5}\b|\b\d{1,3}(?:\.\d{1,3}){3}\b", re.I)
ERROR_CHARS = 200


def public_error(error: str | None) -> str | None:
    """A failed reply's error as exports show it: addresses (URLs, host:port, IPs) replaced by
    "<address>", the first line only, at most `ERROR_CHARS` characters; None for none."""
    if not error:
        return None
    first = _ADDRESS.sub("<address>", error.strip().splitlines()[0] if error.strip() else "")
    return first[:ERROR_CHARS] or None


def message(turn: TurnRow) -> dict[str, str]:
    return {"role": turn.role, "content": turn.text}


def source(turn: TurnRow) -> str:
    """Who wrote a turn's text: "model" for a sampled reply, "human" for a rater's rewrite or message."""
    return "model" if turn.role == "assistant" and not turn.is_rewrite else "human"


def messages(path: list[TurnRow]) -> list[dict[str, str]]:
    return [message(t) for t in path]


def tag_names(conv: ConversationData, turn_id: int) -> list[str]:
    """Distinct labels confirmed on a turn by anyone (live rater or reviewers), sorted."""
    tags = conv.tags.get(turn_id)
    return sorted({tag.label for tag in tags}) if tags else []


def history(conv: ConversationData, parent_id: int) -> tuple[list[dict[str, str]], int]:
    """The path to a branch point as messages, and its user-turn number; built once per branch
    point (several votes and pairs share it; rows only read it)."""
    key = ("history", parent_id)
    found = conv.memo.get(key)
    if found is None:
        path = conv.path_to(parent_id)
        found = conv.memo[key] = (messages(path), sum(1 for t in path if t.role == "user"))
    return found


def candidates(conv: ConversationData, parent_id: int) -> list[TurnRow]:
    """The sampled replies to a user turn that finished, in slot order (A, B, …); found once per branch point."""
    key = ("candidates", parent_id)
    found = conv.memo.get(key)
    if found is None:
        found = conv.memo[key] = finished_candidates(conv.turns[parent_id].children)
    return found


def vote_value(conv: ConversationData, vote: VoteRow) -> str:
    """A vote as a value comparable across raters: the chosen slot letter, 'tie' or 'all_bad'."""
    if vote.choice == "candidate" and vote.chosen_id in conv.turns:
        return slot_letter(conv.turns[vote.chosen_id].position)
    return vote.choice


def vote_agreement(conv: ConversationData, vote: VoteRow) -> tuple[int, float | None]:
    """(votes on this branch point, share of the *other* votes that made the same choice)."""
    votes = conv.votes_on(vote.parent_id)
    if len(votes) < 2:
        return len(votes), None
    mine = vote_value(conv, vote)
    same = sum(1 for v in votes if v.id != vote.id and vote_value(conv, v) == mine)
    return len(votes), same / (len(votes) - 1)


def conversation_agreement(conv: ConversationData) -> float | None:
    """Mean vote agreement over the conversation's branch points that have two votes or more."""
    shares = [share for v in conv.votes if (share := vote_agreement(conv, v)[1]) is not None]
    return sum(shares) / len(shares) if shares else None


def rewrite_of_vote(conv: ConversationData, vote: VoteRow) -> TurnRow | None:
    target = conv.turns.get(vote.continued_from_id) if vote.continued_from_id else None
    return target if target is not None and target.is_rewrite else None


def shared_system(*turns: TurnRow) -> list[dict[str, str]]:
    """A system message when every candidate was sampled with the same one; else none."""
    prompts = {t.system_prompt for t in turns}
    if len(prompts) == 1 and (prompt := prompts.pop()):
        return [{"role": "system", "content": prompt}]
    return []


def kept_votes(
    conv: ConversationData, sel: Selection, *, parent_id: int | None = None
) -> Iterator[tuple[VoteRow, int, float | None]]:
    """The votes the rater and agreement filters keep (at one branch point with `parent_id`), with their
    branch point's vote count and agreement (see `vote_agreement`); worked out once per conversation."""
    kept = conv.memo.get("kept")
    if kept is None:
        kept = conv.memo["kept"] = []
        for vote in conv.votes:
            if not sel.keeps_vote(vote):
                continue
            n, share = vote_agreement(conv, vote)
            if sel.params.min_agreement is not None and (share is None or share < sel.params.min_agreement):
                continue
            kept.append((vote, n, share))
    return iter(kept) if parent_id is None else (item for item in kept if item[0].parent_id == parent_id)


def conversation_kept(conv: ConversationData, sel: Selection) -> bool:
    """The rater and agreement filters for the per-conversation formats (tree, multiturn): the
    conversation's own rater, and its mean branch-point agreement."""
    if sel.params.raters and conv.rater_username not in sel.params.raters:
        return False
    if sel.params.min_agreement is not None:
        share = conversation_agreement(conv)
        return share is not None and share >= sel.params.min_agreement
    return True


class Pair(NamedTuple):
    vote: VoteRow | None  # None for a row that stands for several votes (`--aggregate`)
    chosen: TurnRow
    rejected: TurnRow
    votes: int
    agreement: float | None
    choice: str = ""  # an aggregated row's: "candidate", or "tie" for a pair with no direction


class Tally(NamedTuple):
    """What the kept votes at a branch point say about one pair of replies, seen from its first reply."""

    first: int  # turn id
    wins: int  # votes preferring the first reply
    losses: int  # ... the second
    ties: int  # tie and all-bad votes (they judged both equal)
    weight: float  # Σ of the winning votes' strength weights, + for the first reply, − for the second
    comparison_ids: tuple[int, ...]

    def seen_from(self, turn_id: int) -> tuple[int, int, int, float]:
        """(votes for, votes against, ties, margin) with `turn_id` as the chosen side. The margin is the mean
        signed strength weight over the votes that judged the pair, in [−1, 1]."""
        judged = self.wins + self.losses + self.ties
        margin = self.weight / judged if judged else 0.0
        if turn_id == self.first:
            return self.wins, self.losses, self.ties, margin
        return self.losses, self.wins, self.ties, -margin


def judgements(conv: ConversationData, vote: VoteRow) -> Iterator[tuple[TurnRow, TurnRow, float]]:
    """(x, y, w): the vote prefers x to y with strength weight w, or, with w = 0, judged them equal.

    A candidate vote prefers the chosen candidate to each other one (and says nothing about two
    candidates it did not choose); a rewrite is preferred to every candidate; tie and all-bad judge
    every two candidates equal.
    """
    cands = candidates(conv, vote.parent_id)
    weight = STRENGTH_WEIGHT.get(vote.strength, 1.0)
    if vote.choice == "candidate" and vote.chosen_id in conv.turns:
        chosen = conv.turns[vote.chosen_id]
        yield from ((chosen, c, weight) for c in cands if c.id != chosen.id)
    elif vote.choice in ("tie", "all_bad"):
        yield from ((a, b, 0.0) for i, a in enumerate(cands) for b in cands[i + 1 :])
    rewrite = rewrite_of_vote(conv, vote)
    if rewrite is not None:
        yield from ((rewrite, c, 1.0) for c in cands)


def pair_tallies(conv: ConversationData, sel: Selection, parent_id: int) -> dict[frozenset[int], Tally]:
    """The tallies of every pair of replies judged at a branch point, over its kept votes; built once."""
    key = ("tallies", parent_id)
    found = conv.memo.get(key)
    if found is None:
        raw: dict[frozenset[int], list[Any]] = {}
        for vote, _, _ in kept_votes(conv, sel, parent_id=parent_id):
            for x, y, w in judgements(conv, vote):
                tally = raw.setdefault(frozenset((x.id, y.id)), [min(x.id, y.id), 0, 0, 0, 0.0, []])
                sign = 1 if x.id == tally[0] else -1
                if w == 0:
                    tally[3] += 1
                else:
                    tally[1 if sign > 0 else 2] += 1
                    tally[4] += sign * w
                tally[5].append(vote.id)
        found = conv.memo[key] = {
            pair: Tally(first, wins, losses, ties, weight, tuple(sorted(set(ids))))
            for pair, (first, wins, losses, ties, weight, ids) in raw.items()
        }
    return found


def vote_pairs(conv: ConversationData, sel: Selection) -> Iterator[Pair]:
    """(chosen, rejected) pairs from every kept vote, in vote order (see `judgements`).

    Ties and all-bad votes give no preference; with `include_ties` each unordered pair of
    candidates is still emitted, A first, marked by `choice`.
    """
    for vote, n, share in kept_votes(conv, sel):
        for chosen, rejected, weight in judgements(conv, vote):
            if (weight or sel.params.include_ties) and sel.keeps_models(chosen.model, rejected.model):
                yield Pair(vote, chosen, rejected, n, share)


def aggregated_pairs(conv: ConversationData, sel: Selection) -> Iterator[Pair]:
    """One pair per two replies judged at a branch point (`--aggregate majority` or `mean-margin`), in the
    order their first vote was cast, oriented by the majority of votes or by the sign of the mean margin.
    A pair with no direction (as many votes each way, a zero margin) is dropped, or with `include_ties`
    emitted in slot order with `choice` "tie"."""
    by_margin = sel.params.aggregate == "mean-margin"
    seen: set[frozenset[int]] = set()
    for vote, n, _ in kept_votes(conv, sel):
        tallies = pair_tallies(conv, sel, vote.parent_id)
        for x, y, _ in judgements(conv, vote):
            key = frozenset((x.id, y.id))
            if key in seen:
                continue
            seen.add(key)
            wins, losses, _, margin = tallies[key].seen_from(x.id)
            lead = margin if by_margin else wins - losses
            if lead == 0 and not sel.params.include_ties:
                continue
            chosen, rejected = (x, y) if lead > 0 or (lead == 0 and x.position <= y.position) else (y, x)
            if sel.keeps_models(chosen.model, rejected.model):
                wins, losses, ties, _ = tallies[key].seen_from(chosen.id)
                choice = "candidate" if lead else "tie"
                yield Pair(None, chosen, rejected, n, wins / (wins + losses + ties), choice)


def preference_pairs(conv: ConversationData, sel: Selection) -> Iterator[Pair]:
    """The pairs of the pair formats: per vote, or per pair of replies with `--aggregate`."""
    return vote_pairs(conv, sel) if sel.params.aggregate == "none" else aggregated_pairs(conv, sel)


def _conversation_columns(conv: ConversationData) -> Row:
    return {
        "study": conv.study,
        "conversation_id": conv.id,
        "conversation_uuid": conv.uuid,
        "scenario": conv.scenario["external_id"],
        "language": conv.language,
    }


def _vote_columns(conv: ConversationData, vote: VoteRow | None, turn_index: int) -> Row:
    """Where a judgement comes from: the columns every pair and kto row starts its metadata with. A row that
    stands for several votes (`--aggregate`) has no single vote: its vote columns are null but `choice`."""
    return {
        **_conversation_columns(conv),
        "turn_index": turn_index,
        "comparison_id": vote.id if vote else None,
        "task": vote.task if vote else None,
        "rater": vote.rater if vote else None,
        "choice": vote.choice if vote else None,
        "strength": vote.strength if vote else None,
        "strength_score": STRENGTH_SCORE.get(vote.strength) if vote else None,
    }


def _pair_columns(conv: ConversationData, sel: Selection, pair: Pair, turn_index: int) -> Row:
    """The metadata of a pair row: its vote (none for an aggregated row), both replies, and what every kept
    vote at the branch point says about this pair (`Tally`)."""
    tally = pair_tallies(conv, sel, pair.chosen.parent_id or 0).get(frozenset((pair.chosen.id, pair.rejected.id)))
    wins, losses, ties, margin = tally.seen_from(pair.chosen.id) if tally else (0, 0, 0, 0.0)
    columns = _vote_columns(conv, pair.vote, turn_index)
    if pair.vote is None:
        columns["choice"] = pair.choice
    return {
        **columns,
        "chosen_is_rewrite": pair.chosen.is_rewrite,
        "chosen_turn_id": pair.chosen.id,
        "rejected_turn_id": pair.rejected.id,
        "chosen_turn_uuid": pair.chosen.uuid,
        "rejected_turn_uuid": pair.rejected.uuid,
        "chosen_model": pair.chosen.model,
        "rejected_model": pair.rejected.model,
        "chosen_source": source(pair.chosen),
        "rejected_source": source(pair.rejected),
        "chosen_tags": tag_names(conv, pair.chosen.id),
        "rejected_tags": tag_names(conv, pair.rejected.id),
        "votes": pair.votes,
        "agreement": pair.agreement,
        "votes_for": wins,
        "votes_against": losses,
        "votes_tied": ties,
        "margin": round(margin, 6),
        "comparison_ids": list(tally.comparison_ids) if tally else [],
    }


def dpo_rows(conv: ConversationData, sel: Selection) -> Iterator[Row]:
    for pair in preference_pairs(conv, sel):
        prompt, turn_index = history(conv, pair.chosen.parent_id or 0)
        yield {
            "prompt": shared_system(pair.chosen, pair.rejected) + prompt,
            "chosen": [message(pair.chosen)],
            "rejected": [message(pair.rejected)],
            **_pair_columns(conv, sel, pair, turn_index),
        }


def reward_rows(conv: ConversationData, sel: Selection) -> Iterator[Row]:
    for pair in preference_pairs(conv, sel):
        prompt, turn_index = history(conv, pair.chosen.parent_id or 0)
        system = shared_system(pair.chosen, pair.rejected)
        yield {
            "chosen": system + prompt + [message(pair.chosen)],
            "rejected": system + prompt + [message(pair.rejected)],
            **_pair_columns(conv, sel, pair, turn_index),
        }


def kto_rows(conv: ConversationData, sel: Selection) -> Iterator[Row]:
    """Each judged reply with desirable/undesirable: the chosen one and rewrites are desirable,
    the others and every reply of an all-bad vote are not. A tie says nothing absolute: no rows."""
    for vote, n, share in kept_votes(conv, sel):
        labelled: list[tuple[TurnRow, bool]] = []
        if vote.choice == "candidate":
            labelled += [(c, c.id == vote.chosen_id) for c in candidates(conv, vote.parent_id)]
        elif vote.choice == "all_bad":
            labelled += [(c, False) for c in candidates(conv, vote.parent_id)]
        rewrite = rewrite_of_vote(conv, vote)
        if rewrite is not None:
            labelled.append((rewrite, True))
        prompt, turn_index = history(conv, vote.parent_id)
        for turn, label in labelled:
            if not sel.keeps_models(turn.model):
                continue
            yield {
                "prompt": shared_system(turn) + prompt,
                "completion": [message(turn)],
                "label": label,
                **_vote_columns(conv, vote, turn_index),
                "turn_id": turn.id,
                "turn_uuid": turn.uuid,
                "model": turn.model,
                "source": source(turn),
                "is_rewrite": turn.is_rewrite,
                "tags": tag_names(conv, turn.id),
                "votes": n,
                "agreement": share,
            }


def own_history(conv: ConversationData, parent_id: int, reply: TurnRow) -> list[dict[str, str]] | None:
    """The history before `reply` with every earlier reply replaced by the same model's own reply at that
    branch point (the same slot if it held one there, else its first): each side of a battle is that
    model's own conversation, as in Chatbot Arena. None where the model has no finished reply at an
    earlier branch point (it was not drawn there, or its reply failed)."""
    own: list[dict[str, str]] = []
    for turn in conv.path_to(parent_id):
        if turn.role != "assistant":
            own.append(message(turn))
            continue
        mine = [c for c in candidates(conv, turn.parent_id or 0) if c.model == reply.model]
        if not mine:
            return None
        own.append(message(next((c for c in mine if c.position == reply.position), mine[0])))
    return own


def _lived_is_own(conv: ConversationData, parent_id: int, reply: TurnRow) -> bool:
    """Every earlier reply on the lived history was written by `reply`'s model (not a rewrite)."""
    return all(t.model == reply.model for t in conv.path_to(parent_id) if t.role == "assistant")


def arena_rows(conv: ConversationData, sel: Selection) -> Iterator[Row]:
    """FastChat-style battles: every pair of candidates (slot order) that the vote decides.

    With `--arena-history own` (the default) each side holds its own model's earlier replies and a battle
    where a model has none at an earlier branch point is left out; with `lived` both sides hold the lived
    history, what both models were given (`own_history` says whether that was each model's own).
    """
    own_mode = sel.params.arena_history == "own"
    for vote, n, share in kept_votes(conv, sel):
        cands = candidates(conv, vote.parent_id)
        prompt, turn_index = history(conv, vote.parent_id)
        for i, a in enumerate(cands):
            for b in cands[i + 1 :]:
                if vote.choice == "tie":
                    winner = "tie"
                elif vote.choice == "all_bad":
                    winner = "tie (bothbad)"
                elif vote.chosen_id == a.id:
                    winner = "model_a"
                elif vote.chosen_id == b.id:
                    winner = "model_b"
                else:  # a third candidate won: this pair was not compared
                    continue
                if not sel.keeps_models(a.model, b.model):
                    continue
                if own_mode:
                    history_a, history_b = own_history(conv, vote.parent_id, a), own_history(conv, vote.parent_id, b)
                    if history_a is None or history_b is None:
                        continue
                    own = True
                else:
                    history_a = history_b = prompt
                    own = _lived_is_own(conv, vote.parent_id, a) and _lived_is_own(conv, vote.parent_id, b)
                yield {
                    "question_id": conv.turns[vote.parent_id].uuid.replace("-", ""),
                    "model_a": a.model,
                    "model_b": b.model,
                    "winner": winner,
                    "judge": vote.rater,
                    "conversation_a": shared_system(a) + history_a + [message(a)],
                    "conversation_b": shared_system(b) + history_b + [message(b)],
                    "turn": turn_index,
                    "anony": not sel.study.show_model_names,
                    "language": conv.language,
                    "tstamp": vote.created_at.timestamp(),
                    "own_history": own,
                    "identity_leak": a.identity_leak or b.identity_leak,
                    "study": conv.study,
                    "conversation_id": conv.id,
                    "conversation_uuid": conv.uuid,
                    "comparison_id": vote.id,
                    "task": vote.task,
                    "strength": vote.strength,
                    "strength_score": STRENGTH_SCORE.get(vote.strength),
                    "votes": n,
                    "agreement": share,
                }


def _ms(start: dt.datetime | None, end: dt.datetime | None) -> int | None:
    return round((end - start).total_seconds() * 1000) if start and end else None


def sibling_ranks(conv: ConversationData) -> dict[int, tuple[int, str]]:
    """(rank, verdict) of each reply among its siblings by the live vote, rank 0 best
    (Open-Assistant style).

    A rewrite ranks 0 ("rewrite"); then the chosen candidate ("chosen"), then the others
    ("not_chosen"). A tie ranks all candidates equal at the top ("tie"); all-bad ranks them all
    one below the top ("all_bad"), so that no candidate of an all-bad vote ranks as a tie's do.
    Replies without a live vote get no entry.
    """
    ranks: dict[int, tuple[int, str]] = {}
    for vote in conv.votes:
        if vote.task != "live":
            continue
        rewrite = rewrite_of_vote(conv, vote)
        top = 0
        if rewrite is not None:
            ranks[rewrite.id] = (0, "rewrite")
            top = 1
        for c in candidates(conv, vote.parent_id):
            if vote.choice == "candidate":
                ranks[c.id] = (top, "chosen") if c.id == vote.chosen_id else (top + 1, "not_chosen")
            elif vote.choice == "all_bad":
                ranks[c.id] = (top + 1, "all_bad")
            else:
                ranks[c.id] = (top, "tie")
    return ranks


def tree_rows(conv: ConversationData, sel: Selection) -> Iterator[Row]:
    """The whole conversation as one record: every branch, not only the pairs a vote made."""
    # The model replies only: a rewrite is the rater's text (model null, source "human").
    models = {t.model for t in conv.turns.values() if source(t) == "model"}
    if not conversation_kept(conv, sel) or not sel.keeps_models(*models):
        return
    lived = [t.id for t in conv.lived_path()]
    on_path = set(lived)
    ranks = sibling_ranks(conv)
    yield {
        "study": conv.study,
        "conversation_id": conv.id,
        "conversation_uuid": conv.uuid,
        "language": conv.language,
        "scenario": conv.scenario,
        "rater": conv.rater,
        "status": conv.status,
        "started_at": iso(conv.started_at),
        "ended_at": iso(conv.ended_at),
        "outcome": {
            "goal": conv.outcome_goal or None,
            "understanding": conv.outcome_understanding,
            "comment": conv.outcome_comment,
        },
        "lived_path": lived,
        "turns": [_tree_turn(conv, t, on_path=t.id in on_path, ranked=ranks.get(t.id)) for t in conv.turns.values()],
        "votes": [_tree_vote(v) for v in conv.votes if sel.keeps_vote(v)],
    }


def _tree_turn(conv: ConversationData, t: TurnRow, *, on_path: bool, ranked: tuple[int, str] | None) -> Row:
    """One turn of a tree record, with everything known about how it was generated and judged
    (the tree format is the one that keeps it all)."""
    parent = conv.turns.get(t.parent_id) if t.parent_id is not None else None
    return {
        "turn_id": t.id,
        "parent_id": t.parent_id,
        "turn_uuid": t.uuid,
        "parent_uuid": parent.uuid if parent is not None else None,
        "role": t.role,
        "depth": t.depth,
        "position": t.position,
        "text": t.text,
        "status": t.status,
        "error": public_error(t.error),
        "model": t.model,
        "source": source(t),
        "system_prompt": t.system_prompt,
        "params": generation_params(t.params),
        "seed": t.seed,
        "is_rewrite": t.is_rewrite,
        "rewrite_of": t.rewrite_of_id,
        "on_lived_path": on_path,
        "rank": ranked[0] if ranked else None,
        "verdict": ranked[1] if ranked else None,
        "tags": [_tree_tag(tag) for tag in conv.tags.get(t.id, ())],
        "prompt_tokens": t.prompt_tokens,
        "completion_tokens": t.completion_tokens,
        "created_at": iso(t.created_at),
        "first_token_ms": _ms(t.started_at, t.first_token_at),
        "generation_ms": _ms(t.started_at, t.finished_at),
    }


# The generation parameters a model config may set (workers/params.py), as the tree's `params`
# object: the same keys on every turn, so JSONL and Parquet readers see one struct type.
PARAMS_TYPES: dict[str, pa.DataType] = {
    "temperature": pa.float64(),
    "top_p": pa.float64(),
    "max_new_tokens": pa.int64(),
    "min_new_tokens": pa.int64(),
    "repetition_penalty": pa.float64(),
    "stop": pa.list_(pa.string()),
}


def generation_params(params: dict[str, Any] | None) -> Row | None:
    """A turn's sampling parameters as an object with every key of `PARAMS_TYPES` (null where
    unset); None for a turn sampled without any (user turns, rewrites)."""
    if not params:
        return None
    cast = {pa.float64(): float, pa.int64(): int}
    out: Row = {}
    for name, kind in PARAMS_TYPES.items():
        value = params.get(name)
        out[name] = None if value is None else [str(v) for v in value] if name == "stop" else cast[kind](value)
    return out


def _tree_tag(tag: TagRow) -> Row:
    """A confirmed tag as the tree format lists it: who put it, where, and what it points at."""
    return {
        "label": tag.label,
        "kind": tag.kind,
        "rater": tag.rater,
        "task": tag.task,
        "source": tag.source,
        "span_start": tag.span_start,
        "span_end": tag.span_end,
        "linked_turn_id": tag.linked_turn_id,
    }


def _tree_vote(v: VoteRow) -> Row:
    """A vote as the tree format lists it: the raw judgement, for readers who weigh votes
    their own way."""
    return {
        "comparison_id": v.id,
        "parent_id": v.parent_id,
        "task": v.task,
        "rater": v.rater,
        "choice": v.choice,
        "chosen_id": v.chosen_id,
        "continued_from_id": v.continued_from_id,
        "strength": v.strength,
        "reason": v.reason,
        "decision_ms": v.decision_ms,
        "created_at": iso(v.created_at),
    }


def outcome_score(conv: ConversationData) -> float | None:
    """Mean of the goal answer (yes 1, partly 0, no −1) and understanding ((u − 3) / 2)."""
    parts = []
    if conv.outcome_goal in GOAL_SCORE:
        parts.append(GOAL_SCORE[conv.outcome_goal])
    if conv.outcome_understanding is not None:
        parts.append((conv.outcome_understanding - 3) / 2)
    return sum(parts) / len(parts) if parts else None


def feedback_score(conv: ConversationData, user_turn: TurnRow | None) -> tuple[float, list[str]]:
    """A user turn's implicit feedback: the polarities of its distinct feedback labels, summed
    and clipped to [-1, 1], with the labels."""
    if user_turn is None:
        return 0.0, []
    polarity = {tag.label: tag.polarity for tag in conv.tags.get(user_turn.id, ()) if tag.kind == "feedback"}
    return max(-1.0, min(1.0, float(sum(polarity.values())))), sorted(polarity)


def immediate_preference(conv: ConversationData, reply: TurnRow) -> float:
    """The live vote on the reply that joined the lived path: +1 clear (or a rewrite), +0.5
    slight, 0 tie, −1 all bad."""
    for vote in conv.votes:
        if vote.task == "live" and vote.continued_from_id == reply.id:
            if reply.is_rewrite:
                return 1.0
            if vote.choice == "candidate":
                return STRENGTH_WEIGHT.get(vote.strength, 1.0)
            return -1.0 if vote.choice == "all_bad" else 0.0
    return 0.0


def multiturn_rows(conv: ConversationData, sel: Selection) -> Iterator[Row]:
    """r_t = pref_t + Σ_{k=0}^{T−t} γ^k · feedback_{t+k} + γ^(T−t) · outcome + w · grounding_t.

    feedback_s is the reaction to reply s: the feedback tags on the user turn that follows it
    (k = 0 is the immediate reaction). Replies are numbered t = 1…T along the lived path.
    """
    if not conversation_kept(conv, sel):
        return
    gamma, weight = sel.params.gamma, sel.params.grounding_weight
    path = conv.lived_path()
    replies = [i for i, t in enumerate(path) if t.role == "assistant"]
    feedback = []
    for i in replies:
        following = path[i + 1] if i + 1 < len(path) else None
        feedback.append(feedback_score(conv, following))
    outcome = outcome_score(conv)
    total = len(replies)
    for t, i in enumerate(replies, start=1):
        reply = path[i]
        if not sel.keeps_models(reply.model):
            continue
        pref = immediate_preference(conv, reply)
        future = [
            {"k": k, "turn_index": t + k, "value": feedback[t - 1 + k][0], "labels": feedback[t - 1 + k][1]}
            for k in range(total - t + 1)
        ]
        feedback_return = sum(gamma**k * feedback[t - 1 + k][0] for k in range(total - t + 1))
        outcome_term = gamma ** (total - t) * outcome if outcome is not None else 0.0
        grounding = sorted({tag.label for tag in conv.tags.get(reply.id, ()) if tag.kind == "grounding"})
        yield {
            "prompt": shared_system(reply) + messages(path[:i]),
            "completion": [message(reply)],
            "reward": round(pref + feedback_return + outcome_term + weight * len(grounding), 6),
            "preference": pref,
            "feedback": future,
            "feedback_return": round(feedback_return, 6),
            "grounding_acts": grounding,
            "outcome": outcome,
            "outcome_term": round(outcome_term, 6),
            "gamma": gamma,
            "turn_index": t,
            "num_turns": total,
            **_conversation_columns(conv),
            "turn_id": reply.id,
            "turn_uuid": reply.uuid,
            "model": reply.model,
            "source": source(reply),
            "is_rewrite": reply.is_rewrite,
            "rater": conv.rater,
        }


def error_turns(conv: ConversationData) -> dict[int, list[str]]:
    """User turns on the lived path that react to the reply before them as an error (a negative
    feedback tag: rephrase, correction, complaint, …), with those labels."""
    found: dict[int, list[str]] = {}
    for turn in conv.lived_path():
        if turn.role == "user" and turn.parent_id is not None:
            labels = sorted({tag.label for tag in conv.tags.get(turn.id, ()) if tag.polarity < 0})
            if labels:
                found[turn.id] = labels
    return found


def _continuation(conv: ConversationData, turn: TurnRow, lived: list[TurnRow]) -> list[TurnRow]:
    """The turn and, if the conversation went on from it, everything after it on the lived path."""
    ids = [t.id for t in lived]
    return lived[ids.index(turn.id) :] if turn.id in ids else [turn]


def segments_rows(conv: ConversationData, sel: Selection) -> Iterator[Row]:
    """The segments of `--segments`: SDPO (the default) or the pairs after an error."""
    build = after_error_rows if sel.params.segments == "after-error" else sdpo_rows
    yield from build(conv, sel)


def _segment(turns: list[TurnRow], longest: int) -> list[TurnRow]:
    """At most `longest` messages of `turns`, ending on a reply (a segment never ends on a user turn)."""
    cut = turns[:longest]
    while len(cut) > 1 and cut[-1].role != "assistant":
        cut.pop()
    return cut


def _repair(
    conv: ConversationData, lived: list[TurnRow], reaction: int, errors: dict[int, list[str]]
) -> TurnRow | None:
    """The reply that answered the user's reaction (lived[reaction]), if the user did not react to it as an
    error in turn."""
    if reaction + 1 >= len(lived) or lived[reaction + 1].role != "assistant":
        return None
    after = lived[reaction + 2] if reaction + 2 < len(lived) else None
    return None if after is not None and after.id in errors else lived[reaction + 1]


def sdpo_rows(conv: ConversationData, sel: Selection) -> Iterator[Row]:
    """SDPO segments (arXiv:2501.01821): each starts at a reply the user then reacted to as an error.

    prompt = the history before that reply; rejected = the reply and what followed it on the lived path
    (at most `segment_turns` messages, ending on a reply); chosen = a better reply from the same point:
    each finished sibling candidate ("sibling"), and the reply that answered the user's reaction if the
    user did not object to it in turn ("repair": what the model should have said at once). The vote
    columns are those of the live vote that put the erroneous reply on the path (the in-turn judgement
    the user's reaction overturns); `votes_for`/`votes_against` what every kept vote there said about
    the two replies.
    """
    errors = error_turns(conv)
    if not errors:
        return
    lived = conv.lived_path()
    for index, reaction in enumerate(lived):
        if reaction.id not in errors or index == 0:
            continue
        error = lived[index - 1]
        branch = error.parent_id
        if error.role != "assistant" or source(error) != "model" or branch is None:
            continue  # the user objected to a rewrite: human text, not a model's error
        live = next(
            ((v, n, share) for v, n, share in kept_votes(conv, sel, parent_id=branch)
             if v.task == "live" and v.continued_from_id == error.id),
            None,
        )  # fmt: skip
        if live is None:  # the rater filter or the agreement filter leaves the vote out
            continue
        vote, n, share = live
        rejected = _segment(lived[index - 1 :], sel.params.segment_turns)
        options = [(c, "sibling") for c in candidates(conv, branch) if c.id != error.id]
        repair = _repair(conv, lived, index, errors)
        if repair is not None:
            options.append((repair, "repair"))
        prompt, turn_index = history(conv, branch)
        for better, chosen_from in options:
            if not sel.keeps_models(better.model, error.model):
                continue
            yield {
                "prompt": shared_system(better, error) + prompt,
                "chosen": [message(better)],
                "rejected": messages(rejected),
                "segment_kind": "sdpo",
                "chosen_from": chosen_from,
                "chosen_messages": 1,
                "rejected_messages": len(rejected),
                "error_turn_id": error.id,
                "error_labels": errors[reaction.id],
                "reaction_turn_id": reaction.id,
                **_pair_columns(conv, sel, Pair(vote, better, error, n, share), turn_index),
            }


def after_error_rows(conv: ConversationData, sel: Selection) -> Iterator[Row]:
    """`--segments after-error`: the vote pairs at the branch points that follow an error (the user turn
    that reacted to it), each side continued along the lived path if the conversation went on from
    it, both cut to the same number of messages (at most `segment_turns`)."""
    errors = error_turns(conv)
    if not errors:
        return
    lived = conv.lived_path()
    for pair in vote_pairs(conv, sel):
        assert pair.vote is not None
        labels = errors.get(pair.vote.parent_id)
        if labels is None:
            continue
        good = _continuation(conv, pair.chosen, lived)
        bad = _continuation(conv, pair.rejected, lived)
        length = min(len(good), len(bad), sel.params.segment_turns)
        prompt, turn_index = history(conv, pair.vote.parent_id)
        yield {
            "prompt": shared_system(pair.chosen, pair.rejected) + prompt,
            "chosen": messages(good[:length]),
            "rejected": messages(bad[:length]),
            "segment_kind": "after_error",
            "chosen_from": "vote",
            "chosen_messages": length,
            "rejected_messages": length,
            "error_turn_id": conv.turns[pair.vote.parent_id].parent_id,
            "error_labels": labels,
            "reaction_turn_id": pair.vote.parent_id,
            **_pair_columns(conv, sel, pair, turn_index),
        }


BUILDERS: dict[str, Callable[[ConversationData, Selection], Iterator[Row]]] = {
    "dpo": dpo_rows,
    "kto": kto_rows,
    "reward": reward_rows,
    "tree": tree_rows,
    "arena": arena_rows,
    "multiturn": multiturn_rows,
    "segments": segments_rows,
}

# Arrow schemas for Parquet, column for column as above.
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
_CONVERSATION_COLUMNS = [
    ("study", pa.string()),
    ("conversation_id", pa.int64()),
    ("conversation_uuid", pa.string()),
    ("scenario", pa.string()),
    ("language", pa.string()),
]
_VOTE_COLUMNS = [
    *_CONVERSATION_COLUMNS,
    ("turn_index", pa.int32()),
    ("comparison_id", pa.int64()),
    ("task", pa.string()),
    ("rater", pa.string()),
    ("choice", pa.string()),
    ("strength", pa.string()),
    ("strength_score", pa.float64()),
]
_PAIR_COLUMNS = [
    *_VOTE_COLUMNS,
    ("chosen_is_rewrite", pa.bool_()),
    ("chosen_turn_id", pa.int64()),
    ("rejected_turn_id", pa.int64()),
    ("chosen_turn_uuid", pa.string()),
    ("rejected_turn_uuid", pa.string()),
    ("chosen_model", pa.string()),
    ("rejected_model", pa.string()),
    ("chosen_source", pa.string()),
    ("rejected_source", pa.string()),
    ("chosen_tags", pa.list_(pa.string())),
    ("rejected_tags", pa.list_(pa.string())),
    ("votes", pa.int32()),
    ("agreement", pa.float64()),
    ("votes_for", pa.int32()),
    ("votes_against", pa.int32()),
    ("votes_tied", pa.int32()),
    ("margin", pa.float64()),
    ("comparison_ids", pa.list_(pa.int64())),
]
_TAG = pa.struct(
    [
        ("label", pa.string()),
        ("kind", pa.string()),
        ("rater", pa.string()),
        ("task", pa.string()),
        ("source", pa.string()),
        ("span_start", pa.int32()),
        ("span_end", pa.int32()),
        ("linked_turn_id", pa.int64()),
    ]
)
_TREE_TURN = pa.struct(
    [
        ("turn_id", pa.int64()),
        ("parent_id", pa.int64()),
        ("turn_uuid", pa.string()),
        ("parent_uuid", pa.string()),
        ("role", pa.string()),
        ("depth", pa.int32()),
        ("position", pa.int32()),
        ("text", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("model", pa.string()),
        ("source", pa.string()),
        ("system_prompt", pa.string()),
        ("params", pa.struct(list(PARAMS_TYPES.items()))),
        ("seed", pa.int64()),
        ("is_rewrite", pa.bool_()),
        ("rewrite_of", pa.int64()),
        ("on_lived_path", pa.bool_()),
        ("rank", pa.int32()),
        ("verdict", pa.string()),
        ("tags", pa.list_(_TAG)),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("created_at", pa.string()),
        ("first_token_ms", pa.int64()),
        ("generation_ms", pa.int64()),
    ]
)
_VOTE = pa.struct(
    [
        ("comparison_id", pa.int64()),
        ("parent_id", pa.int64()),
        ("task", pa.string()),
        ("rater", pa.string()),
        ("choice", pa.string()),
        ("chosen_id", pa.int64()),
        ("continued_from_id", pa.int64()),
        ("strength", pa.string()),
        ("reason", pa.string()),
        ("decision_ms", pa.int64()),
        ("created_at", pa.string()),
    ]
)
SCHEMAS: dict[str, pa.Schema] = {
    "dpo": pa.schema([("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES), *_PAIR_COLUMNS]),
    "reward": pa.schema([("chosen", MESSAGES), ("rejected", MESSAGES), *_PAIR_COLUMNS]),
    "kto": pa.schema(
        [
            ("prompt", MESSAGES),
            ("completion", MESSAGES),
            ("label", pa.bool_()),
            *_VOTE_COLUMNS,
            ("turn_id", pa.int64()),
            ("turn_uuid", pa.string()),
            ("model", pa.string()),
            ("source", pa.string()),
            ("is_rewrite", pa.bool_()),
            ("tags", pa.list_(pa.string())),
            ("votes", pa.int32()),
            ("agreement", pa.float64()),
        ]
    ),
    "arena": pa.schema(
        [
            ("question_id", pa.string()),
            ("model_a", pa.string()),
            ("model_b", pa.string()),
            ("winner", pa.string()),
            ("judge", pa.string()),
            ("conversation_a", MESSAGES),
            ("conversation_b", MESSAGES),
            ("turn", pa.int64()),  # int64 as in the Chatbot Arena release
            ("anony", pa.bool_()),
            ("language", pa.string()),
            ("tstamp", pa.float64()),
            ("own_history", pa.bool_()),
            ("identity_leak", pa.bool_()),
            ("study", pa.string()),
            ("conversation_id", pa.int64()),
            ("conversation_uuid", pa.string()),
            ("comparison_id", pa.int64()),
            ("task", pa.string()),
            ("strength", pa.string()),
            ("strength_score", pa.float64()),
            ("votes", pa.int32()),
            ("agreement", pa.float64()),
        ]
    ),
    "tree": pa.schema(
        [
            ("study", pa.string()),
            ("conversation_id", pa.int64()),
            ("conversation_uuid", pa.string()),
            ("language", pa.string()),
            (
                "scenario",
                pa.struct(
                    [
                        ("external_id", pa.string()),
                        ("title", pa.string()),
                        ("brief", pa.string()),
                        ("hidden_intent", pa.string()),
                    ]
                ),
            ),
            ("rater", pa.string()),
            ("status", pa.string()),
            ("started_at", pa.string()),
            ("ended_at", pa.string()),
            (
                "outcome",
                pa.struct([("goal", pa.string()), ("understanding", pa.int32()), ("comment", pa.string())]),
            ),
            ("lived_path", pa.list_(pa.int64())),
            ("turns", pa.list_(_TREE_TURN)),
            ("votes", pa.list_(_VOTE)),
        ]
    ),
    "multiturn": pa.schema(
        [
            ("prompt", MESSAGES),
            ("completion", MESSAGES),
            ("reward", pa.float64()),
            ("preference", pa.float64()),
            (
                "feedback",
                pa.list_(
                    pa.struct(
                        [
                            ("k", pa.int32()),
                            ("turn_index", pa.int32()),
                            ("value", pa.float64()),
                            ("labels", pa.list_(pa.string())),
                        ]
                    )
                ),
            ),
            ("feedback_return", pa.float64()),
            ("grounding_acts", pa.list_(pa.string())),
            ("outcome", pa.float64()),
            ("outcome_term", pa.float64()),
            ("gamma", pa.float64()),
            ("turn_index", pa.int32()),
            ("num_turns", pa.int32()),
            *_CONVERSATION_COLUMNS,
            ("turn_id", pa.int64()),
            ("turn_uuid", pa.string()),
            ("model", pa.string()),
            ("source", pa.string()),
            ("is_rewrite", pa.bool_()),
            ("rater", pa.string()),
        ]
    ),
    "segments": pa.schema(
        [
            ("prompt", MESSAGES),
            ("chosen", MESSAGES),
            ("rejected", MESSAGES),
            ("segment_kind", pa.string()),
            ("chosen_from", pa.string()),
            ("chosen_messages", pa.int32()),
            ("rejected_messages", pa.int32()),
            ("error_turn_id", pa.int64()),
            ("error_labels", pa.list_(pa.string())),
            ("reaction_turn_id", pa.int64()),
            *_PAIR_COLUMNS,
        ]
    ),
}

# One line per column for the dataset card's column table: `COLUMN_DESCRIPTIONS` where a name means the
# same in every format, `FORMAT_COLUMN_DESCRIPTIONS[format]` where it means something else there. A column
# added to `SCHEMAS` without a line here fails `tests/exports/test_card_sections.py`.
COLUMN_DESCRIPTIONS: dict[str, str] = {
    "prompt": "System prompt (if the sides share one) and the lived history up to and including the user turn.",
    "chosen": "The preferred reply, one assistant message.",
    "rejected": "The other reply, one assistant message.",
    "completion": "The judged reply, one assistant message.",
    "label": "True for the chosen candidate or a rewrite, false for the others and for all-bad candidates.",
    "study": "Study slug.",
    "conversation_id": "Conversation id (this database's integer; see `conversation_uuid`).",
    "conversation_uuid": "Conversation UUID: stable across databases and exports.",
    "language": "BCP 47 tag of the language the study ran in, as the researcher declared it (not detected).",
    "strength_score": "The strength as a number: 1.0 clear, 0.5 slight; null where the study did not ask.",
    "chosen_turn_uuid": "Turn UUID of the chosen reply.",
    "rejected_turn_uuid": "Turn UUID of the rejected reply.",
    "turn_uuid": "Turn UUID of the reply.",
    "votes_for": "Kept votes at the branch point that preferred the chosen side to the rejected one.",
    "votes_against": "... that preferred the rejected side.",
    "votes_tied": "... that judged the two equal (tie, all bad).",
    "margin": "Mean signed strength over the votes that judged the pair (+1 clear, +0.5 slight for the chosen side, "
    "0 tie, negative for the rejected side), in [-1, 1].",
    "comparison_ids": "Ids of every kept vote that judged this pair of replies.",
    "identity_leak": "A reply named its own model or maker (`ModelConfig.identity_names`): the battle is not blind; "
    "the leaderboard leaves such battles out by default.",
    "own_history": "Each side holds only its own model's earlier replies (`--arena-history own`: always true).",
    "scenario": "Scenario external id.",
    "turn_index": "1-based number of the user turn (the branch point).",
    "comparison_id": "Id of the vote the row comes from; null in an aggregated row (`--aggregate`: see "
    "`comparison_ids`).",
    "task": "`live` (the rater's own vote) or `review` (a reviewer's); null in an aggregated row.",
    "rater": "Rater pseudonym (`rater-<id>`); null in an aggregated row.",
    "choice": "`candidate`, `tie` or `all_bad`.",
    "strength": "`clear`, `slight` or empty (not asked); null in an aggregated row.",
    "chosen_is_rewrite": "The chosen side is the rater's rewrite (human text).",
    "chosen_turn_id": "Turn id of the chosen reply.",
    "rejected_turn_id": "Turn id of the rejected reply.",
    "chosen_model": "Model config of the chosen reply; null for a rewrite.",
    "rejected_model": "Model config of the rejected reply; null for a rewrite.",
    "chosen_source": "Who wrote the chosen reply: `model` or `human`.",
    "rejected_source": "Who wrote the rejected reply: `model` or `human`.",
    "chosen_tags": "Distinct confirmed labels on the chosen reply.",
    "rejected_tags": "Distinct confirmed labels on the rejected reply.",
    "votes": "Votes (live and review) at the branch point.",
    "agreement": "Share of the other votes at the branch point that made the same choice; null with one vote. "
    "In an aggregated row: the share of the votes that judged the pair that chose its chosen side.",
    "turn_id": "Turn id of the reply.",
    "model": "Model config of the reply; null for a rewrite.",
    "source": "Who wrote the reply: `model` or `human`.",
    "is_rewrite": "The reply is the rater's rewrite (human text).",
    "tags": "Distinct confirmed labels on the reply.",
    "question_id": "UUID (32 hex digits) of the user turn the battle answers.",
    "model_a": "Model config of the first candidate (slot order).",
    "model_b": "Model config of the second candidate (slot order).",
    "winner": "`model_a`, `model_b`, `tie` or `tie (bothbad)`.",
    "judge": "Rater pseudonym.",
    "conversation_a": "System prompt, history and model A's reply; the history's replies are model A's own "
    "(`--arena-history own`) or the lived ones (`lived`).",
    "conversation_b": "The same for model B.",
    "turn": "1-based user turn number.",
    "anony": "True when raters did not see model names (the study's default).",
    "tstamp": "Vote time, Unix seconds.",
    "status": "`active`, `completed` or `abandoned`.",
    "started_at": "Conversation start, ISO 8601 UTC.",
    "ended_at": "Conversation end, ISO 8601 UTC; null while active.",
    "outcome": "The rater's outcome survey: goal reached, understanding 1-5, comment.",
    "lived_path": "Turn ids from the first user message to the head.",
    "turns": "Every turn of every branch, with parent ids, generation details, rank, verdict and tags.",
    "reward": "Multi-turn-aware reward: preference + feedback return + outcome term + grounding term.",
    "preference": "Immediate preference from the live vote that put the reply on the path.",
    "feedback": "Implicit feedback on this and later replies: `{k, turn_index, value, labels}` per step.",
    "feedback_return": "Discounted sum of the feedback values.",
    "grounding_acts": "Distinct grounding labels on the reply.",
    "outcome_term": "The outcome discounted to this reply (0 without a survey).",
    "gamma": "Discount used (`--gamma`).",
    "num_turns": "Replies on the lived path.",
    "segment_kind": "`sdpo` (a segment starting at the erroneous reply) or `after_error` (`--segments after-error`).",
    "chosen_from": "Where the chosen side comes from: `sibling` (another candidate at the erroneous reply's branch "
    "point), `repair` (the reply that answered the user's reaction) or `vote` (after-error pairs).",
    "chosen_messages": "Messages on the chosen side.",
    "rejected_messages": "Messages on the rejected side.",
    "error_turn_id": "The reply the user reacted to as an error.",
    "error_labels": "The negative feedback labels of that reaction.",
    "reaction_turn_id": "The user turn that reacted to the reply as an error.",
    "parent_uuid": "Turn UUID of the parent turn.",
}
FORMAT_COLUMN_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "reward": {
        "chosen": "System prompt (if shared), history and the preferred reply.",
        "rejected": "System prompt (if shared), history and the other reply.",
    },
    "multiturn": {
        "prompt": "System prompt of the reply's config and the lived history before the reply.",
        "outcome": "The outcome survey as a number in [-1, 1]; null without a survey.",
        "rater": "Pseudonym of the conversation's rater.",
    },
    "segments": {
        "prompt": "System prompt (if the sides share one) and the history before the segment.",
        "chosen": "The better reply from the segment's start (sdpo), or the chosen continuation (after_error).",
        "rejected": "sdpo: the erroneous reply and what followed it on the lived path (at most `--segment-turns` "
        "messages, ending on a reply); after_error: the other continuation, cut to the chosen one's length.",
        "comparison_id": "The vote the row comes from; sdpo: the live vote that put the erroneous reply on the path.",
        "choice": "The vote's choice (sdpo: the in-turn vote, which chose the erroneous reply).",
    },
    "tree": {
        "scenario": "The scenario: external id, title, brief and hidden intent.",
        "rater": "Pseudonym of the conversation's rater.",
        "votes": "Every kept vote: branch point, task, rater, choice, chosen turn, strength, reason, timing.",
    },
}


def column_description(fmt: str, column: str) -> str | None:
    """The card's one-line description of a column of `fmt`; None for a column nobody documented."""
    return FORMAT_COLUMN_DESCRIPTIONS.get(fmt, {}).get(column, COLUMN_DESCRIPTIONS.get(column))
