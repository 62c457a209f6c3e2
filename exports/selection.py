"""What an export reads: the parameters, and the study's conversations a chunk at a time.

A chunk is a few hundred conversations fetched with four flat `values_list` queries (keyset
pagination on the conversation id), so memory depends on the chunk size, never on the study.
The rows are plain tuples wrapped in small slotted classes: building model instances for
millions of turns would cost more than the export itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import queue
import re
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.contrib.auth import get_user_model
from django.db import connections
from psycopg import adapters as psycopg_adapters
from psycopg.adapt import Loader
from psycopg.postgres import types as postgres_types
from psycopg.pq import Format

from annotate import tree
from annotate.models import Comparison, Conversation, Study, Turn
from annotate.selectors import excluded_raters
from labeling.models import Label, ReviewAssignment, Tag
from labeling.selectors import REVIEWS_HOLDING_A_PLACE as COVERING_REVIEWS
from labeling.selectors import labels_for
from workers.models import ModelConfig

FORMATS = ("dpo", "kto", "reward", "tree", "arena", "multiturn", "segments")
FILE_FORMATS = ("jsonl", "parquet")
# --aggregate: how repeated judgements of the same pair of replies (several raters, reviewers) become rows
# of the pair formats (dpo, reward): one per vote, or one per pair by majority or by mean signed margin.
AGGREGATES = ("none", "majority", "mean-margin")
PAIR_FORMATS = frozenset({"dpo", "reward"})
# --segments: SDPO segments (starting at the reply the user reacted to as an error), or the pairs of the
# vote at the branch point after such a reaction (the earlier definition).
SEGMENT_KINDS = ("sdpo", "after-error")
# --arena-history: each side's earlier replies are that model's own (Chatbot Arena), or the lived ones
# (what both models were actually given).
ARENA_HISTORIES = ("own", "lived")
# Formats that read a turn's generation details and timings. The others read a lean turn: half
# the columns and no timestamps or JSON to decode, which halves the cost of reading a study.
DETAIL_FORMATS = frozenset({"tree"})
# Columns of a lean turn, in `TurnRow` order (model_config_id becomes the model's name), then
# the details.
_TURN_COLUMNS = (
    "id", "parent_id", "role", "position", "text", "status", "model_config_id", "system_prompt", "is_rewrite",
    "uuid", "identity_leak",
)  # fmt: skip
_TURN_DETAILS = (
    "depth", "error", "params", "seed", "rewrite_of_id", "prompt_tokens", "completion_tokens", "created_at",
    "started_at", "first_token_at", "finished_at",
)  # fmt: skip


@dataclass(frozen=True)
class ExportParams:
    """Everything that decides an export's content; recorded in the manifest."""

    study: str
    format: str
    file_format: str = "jsonl"
    gzip: bool = False
    since: dt.date | None = None  # conversations started on or after this day (UTC)
    until: dt.date | None = None  # ... and before the end of this day
    raters: tuple[str, ...] = ()  # usernames whose judgements are kept
    models: tuple[str, ...] = ()  # model config names; rows involving any other model are dropped
    min_agreement: float | None = None
    completed_only: bool = False
    include_excluded: bool = False  # keep the work of raters excluded by quality control (Participant.excluded)
    include_ties: bool = False  # dpo/reward/segments: tie and all-bad votes as pairs, marked by `choice`
    gamma: float = 0.9  # multiturn: discount of later feedback and of the outcome
    grounding_weight: float = 0.0  # multiturn: reward per grounding act on the turn
    segment_turns: int = 3  # segments: longest segment, in messages
    segments: str = "sdpo"  # segments: which segments (SEGMENT_KINDS)
    aggregate: str = "none"  # dpo/reward: one row per vote, or per pair of replies (AGGREGATES)
    arena_history: str = "own"  # arena: whose earlier replies each side holds (ARENA_HISTORIES)
    licence: str = "other"
    split: str = ""  # "train=0.9,test=0.1": conversations shared out among named splits, one file each
    split_seed: int = 0  # which conversations go where (the same seed, the same assignment)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportParams:
        """From `as_manifest`'s JSON (a stored request), a form's cleaned data or command options:
        unknown keys are ignored, dates may be ISO strings, names any iterable."""
        values = dict(data)
        for name in ("since", "until"):
            if isinstance(values.get(name), str):
                values[name] = dt.date.fromisoformat(values[name])
        for name in ("raters", "models"):
            values[name] = tuple(sorted(set(values.get(name) or ())))
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})

    def as_manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            if name in _SPLIT_FIELDS and not self.split:  # an unsplit export's manifest stays as it was
                continue
            if name in _FORMAT_FIELDS and self.format not in _FORMAT_FIELDS[name]:  # options of other formats
                continue
            value = getattr(self, name)
            out[name] = (
                value.isoformat() if isinstance(value, dt.date) else list(value) if isinstance(value, tuple) else value
            )
        return out


_SPLIT_FIELDS = ("split", "split_seed")
# Options that only some formats read: recorded in the manifest of those formats only.
_FORMAT_FIELDS = {"segments": {"segments"}, "aggregate": PAIR_FORMATS, "arena_history": {"arena"}}
_SPLIT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def split_shares(spec: str) -> tuple[tuple[str, float], ...]:
    """The named shares of a `--split` value ("train=0.9,test=0.1"), in the order given; () for "".

    Raises ValueError with a message for the user: a name that `datasets` would not take as a
    split, a name twice, a share not in (0, 1], or shares that do not add up to 1.
    """
    if not spec.strip():
        return ()
    shares: list[tuple[str, float]] = []
    for item in spec.split(","):
        name, sep, share_text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"“{item.strip()}” is not NAME=SHARE (e.g. train=0.9,test=0.1).")
        if not _SPLIT_NAME.fullmatch(name):
            raise ValueError(f"“{name}” is not a split name: letters, digits and _ only, starting with a letter.")
        if name in dict(shares):
            raise ValueError(f"The split “{name}” is named twice.")
        try:
            share = float(share_text)
        except ValueError:
            raise ValueError(f"The share of “{name}” is not a number: “{share_text.strip()}”.") from None
        if not (math.isfinite(share) and 0 < share <= 1):
            raise ValueError(f"The share of “{name}” must be above 0 and at most 1, not {share_text.strip()}.")
        shares.append((name, share))
    total = math.fsum(share for _, share in shares)
    if abs(total - 1) > 1e-6:
        raise ValueError(f"The split shares add up to {total:g}, not 1.")
    return tuple(shares)


def split_of(conversation_id: int, *, shares: tuple[tuple[str, float], ...], seed: int) -> str:
    """The split a conversation goes to: by a hash of the seed and its id, so the same seed gives
    the same assignment whatever the chunks or processes, and every row of a conversation (every
    prompt prefix it holds) lands in one split."""
    digest = hashlib.sha256(f"{seed}:{conversation_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    reached = 0.0
    for name, share in shares:
        reached += share
        if point < reached:
            return name
    return shares[-1][0]  # shares adding up to a hair under 1


@dataclass(slots=True)
class TurnRow:
    """A turn as the formats read it. The fields after `is_rewrite` (generation details and
    timings) are read only for `DETAIL_FORMATS`; for the others they stay None."""

    id: int
    parent_id: int | None
    role: str
    position: int
    text: str
    status: str
    model: str | None  # the model config's name; None for user turns and rewrites (human text)
    system_prompt: str
    is_rewrite: bool
    uuid: str
    identity_leak: bool  # the reply named its own model (arena battles with one are flagged)
    depth: int | None = None
    error: str | None = None
    params: dict[str, Any] | None = None
    seed: int | None = None
    rewrite_of_id: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    created_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    first_token_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    children: list[TurnRow] = field(default_factory=list)


@dataclass(slots=True)
class VoteRow:
    id: int
    parent_id: int
    task: str
    choice: str
    chosen_id: int | None
    continued_from_id: int | None
    strength: str
    reason: str
    decision_ms: int | None
    rater: str  # pseudonym
    rater_username: str
    created_at: dt.datetime


@dataclass(slots=True)
class TagRow:
    turn_id: int
    label: str
    kind: str
    polarity: int
    rater: str
    task: str
    source: str
    span_start: int | None
    span_end: int | None
    linked_turn_id: int | None


@dataclass(slots=True)
class ConversationData:
    """One conversation, its whole tree, its votes and confirmed tags."""

    id: int
    uuid: str
    study: str
    language: str  # the study's declared language (BCP 47)
    scenario: dict[str, str]
    rater: str
    rater_username: str
    status: str
    head_id: int | None
    outcome_goal: str
    outcome_understanding: int | None
    outcome_comment: str
    started_at: dt.datetime
    ended_at: dt.datetime | None
    turns: dict[int, TurnRow] = field(default_factory=dict)
    votes: list[VoteRow] = field(default_factory=list)
    tags: dict[int, list[TagRow]] = field(default_factory=dict)
    # Pseudonyms of the reviewers who cover it (an open or done review): they coded each turn they were shown,
    # a turn they left untagged as "no label" (tag agreement, `labeling.agreement.tag_units`).
    reviewers: list[str] = field(default_factory=list)
    # ... and of those whose review expired: they coded part of it and left, so their review tags do not count.
    reviewers_gone: set[str] = field(default_factory=set)
    # What several rows of one conversation share (prompts, votes per branch point), built once.
    memo: dict[Any, Any] = field(default_factory=dict)

    def lived_path(self) -> list[TurnRow]:
        """Root → the conversation's head: the branch the rater actually continued."""
        return tree.path_to(self.turns, self.head_id)

    def path_to(self, turn_id: int) -> list[TurnRow]:
        """Root → `turn_id`, both included."""
        return tree.path_to(self.turns, turn_id)

    def votes_on(self, parent_id: int) -> list[VoteRow]:
        by_parent = self.memo.get("votes")
        if by_parent is None:
            by_parent = self.memo["votes"] = {}
            for vote in self.votes:
                by_parent.setdefault(vote.parent_id, []).append(vote)
        return by_parent.get(parent_id, [])


def pseudonym(user_id: int) -> str:
    """Raters appear in datasets by a stable pseudonym, never by username (often a crowd id)."""
    return f"rater-{user_id}"


class _JsonLoader(Loader):
    """jsonb as JSONField.from_db_value gives it, decoded once per distinct text in a result."""

    def __init__(self, oid: int, context: Any = None) -> None:
        super().__init__(oid, context)
        self.decoded: dict[bytes, Any] = {}

    def load(self, data: Any) -> Any:
        data = bytes(data)
        if data not in self.decoded:
            text = data.decode()
            try:
                self.decoded[data] = json.loads(text)
            except json.JSONDecodeError:
                self.decoded[data] = text
        return self.decoded[data]


_TIMESTAMPTZ = postgres_types["timestamptz"].oid
_TIMESTAMPTZ_LOADER = psycopg_adapters.get_loader(_TIMESTAMPTZ, Format.TEXT)  # psycopg's C loader
_UUID_AS_TEXT = psycopg_adapters.get_loader(postgres_types["text"].oid, Format.TEXT)


def _rows(qs: Any) -> list[tuple[Any, ...]]:
    """The rows of a `values_list` query, equal to Django's, but read several times faster on PostgreSQL.

    Django reads timestamptz through a Python subclass of psycopg's loader (~7 µs a value, four
    per turn) and passes each row through its converters: most of an export's time (see
    docs/benchmarks.md). Here the SQL Django compiled runs on a cursor that uses psycopg's own
    loader; the session time zone is UTC (USE_TZ), so the datetimes are the same. JSON is decoded
    once per distinct text: generation parameters repeat, and the decoded values are only read.
    """
    connection = connections[qs.db]
    if connection.vendor != "postgresql":
        return list(qs)
    sql, params = qs.query.get_compiler(connection=connection).as_sql()
    with connection.cursor() as cursor:
        cursor.cursor.adapters.register_loader(_TIMESTAMPTZ, _TIMESTAMPTZ_LOADER)
        cursor.cursor.adapters.register_loader("jsonb", _JsonLoader)
        cursor.cursor.adapters.register_loader("uuid", _UUID_AS_TEXT)  # the rows want text: no UUID objects
        cursor.execute(sql, params)
        return list(cursor.fetchall())


_Item = TypeVar("_Item")
# A run of conversations by id: the first, and the first of the next run (None: to the end).
Span = tuple[int, int | None]


def _read_ahead(produce: Callable[[], Iterator[_Item]]) -> Generator[_Item, None, None]:
    """The items of `produce()`, made one ahead of the consumer in a thread of their own.

    The thread opens its own database connection (Django's are per thread) and closes it when
    done. At most three items exist at once: the consumer's, one queued and one being made.
    An exception in the thread is raised in the consumer; closing the iterator stops the thread.
    """
    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in produce():
                if not put("item", item):
                    return
            put("done", None)
        except BaseException as exc:  # noqa: BLE001 (re-raised in the consumer)
            put("error", exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, name="export-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "error":
                raise value
            if kind == "done":
                return
            yield value
    finally:
        stop.set()
        thread.join()


@dataclass
class Selection:
    """The study, the conversations an export covers, and lookups shared by every chunk."""

    params: ExportParams
    study: Study
    labels: list[Label]
    model_names: dict[int, str]
    # user id → (pseudonym, username): the study's raters and voters, others added when first met
    rater_names: dict[int, tuple[str, str]]
    details: bool = False  # read the turns' generation details and timings (DETAIL_FORMATS)
    span: Span | None = None  # only the conversations with ids in [first, next part's first)
    # Raters excluded by quality control whose work is left out (none with `include_excluded`), and how many
    # raters and conversations of the study that leaves out (for the dataset card).
    excluded: frozenset[int] = frozenset()
    excluded_raters: int = 0
    excluded_conversations: int = 0

    def conversations(self) -> Any:
        p = self.params
        qs = Conversation.objects.filter(study=self.study)
        if self.excluded:
            qs = qs.exclude(rater_id__in=self.excluded)
        if p.completed_only:
            qs = qs.filter(status=Conversation.Status.COMPLETED)
        if p.since:
            qs = qs.filter(started_at__gte=dt.datetime.combine(p.since, dt.time.min, tzinfo=dt.UTC))
        if p.until:
            end = dt.datetime.combine(p.until + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
            qs = qs.filter(started_at__lt=end)
        if self.span is not None:
            first, stop = self.span
            qs = qs.filter(id__gte=first) if stop is None else qs.filter(id__gte=first, id__lt=stop)
        return qs

    def concurrent_reads(self) -> bool:
        """Whether other connections (a thread's, another process's) see what this one sees:
        on PostgreSQL outside a transaction. Inside one (tests, a caller's atomic block) they
        would miss the uncommitted rows."""
        connection = connections[Conversation.objects.db]
        return connection.vendor == "postgresql" and not connection.in_atomic_block

    def spans(self, *, total: int, chunk: int, parts: int) -> list[Span]:
        """Split the selection into at most `parts` runs of whole chunks, by conversation id.

        Each run starts where a chunk of the unsplit selection starts, so the runs' chunks are
        the same chunks in the same order: written one after another they give the same file.
        One small query per boundary; no list of every id.
        """
        chunks = -(-total // chunk)
        per = -(-chunks // max(1, min(parts, chunks))) * chunk
        ordered = self.conversations().order_by("id").values_list("id", flat=True)
        firsts = [ordered[offset] for offset in range(0, total, per)]
        return [(first, firsts[i + 1] if i + 1 < len(firsts) else None) for i, first in enumerate(firsts)]

    def count(self) -> int:
        return self.conversations().count()

    def split_names(self) -> tuple[str, ...]:
        """The splits the rows go to, in the order given; ("train",) for an unsplit export."""
        return tuple(name for name, _ in split_shares(self.params.split)) or ("train",)

    def split_for(self) -> Callable[[int], str]:
        """conversation id → its split name."""
        shares = split_shares(self.params.split)
        if not shares:
            return lambda conversation_id: "train"
        seed = self.params.split_seed
        return lambda conversation_id: split_of(conversation_id, shares=shares, seed=seed)

    def chunks(self, *, size: int) -> Generator[list[ConversationData], None, None]:
        """The selected conversations in id order, `size` at a time, fully loaded.

        Where `concurrent_reads` allows, the next chunk is read by a thread with its own
        connection while the caller writes this one: the server runs its queries meanwhile
        instead of the caller waiting for them. The output is the same either way.
        """
        if self.concurrent_reads():
            return _read_ahead(lambda: self._chunks(size))
        return self._chunks(size)

    def _chunks(self, size: int) -> Generator[list[ConversationData], None, None]:
        last = 0
        while True:
            rows = _rows(
                self.conversations()
                .filter(id__gt=last)
                .order_by("id")
                .values_list(
                    "id", "uuid", "scenario__external_id", "scenario__title", "scenario__brief",
                    "scenario__hidden_intent", "rater_id", "status", "head_id", "outcome_goal",
                    "outcome_understanding", "outcome_comment", "started_at", "ended_at",
                )[:size]
            )  # fmt: skip
            if not rows:
                return
            last = rows[-1][0]
            yield self._load(rows)

    def _load(self, rows: list[tuple[Any, ...]]) -> list[ConversationData]:
        """One chunk, fully loaded: its conversations, then their turns, votes and tags, one
        flat query each (see the module docstring)."""
        by_id = self._load_conversations(rows)
        ids = list(by_id)
        self._load_turns(by_id, ids)
        self._load_votes(by_id, ids)
        self._load_tags(by_id)
        self._load_reviewers(by_id)
        return list(by_id.values())

    def _load_conversations(self, rows: list[tuple[Any, ...]]) -> dict[int, ConversationData]:
        """The chunk's conversations by id, from `_chunks`' rows, still without turns, votes or
        tags; by id so that the flat queries below can hand each row to its conversation."""
        slug, language = self.study.slug, self.study.language
        by_id: dict[int, ConversationData] = {}
        for cid, cuuid, ext, title, brief, intent, rater_id, status, head, goal, und, comment, started, ended in rows:
            rater, rater_username = self._rater(rater_id)
            by_id[cid] = ConversationData(
                id=cid,
                uuid=str(cuuid),
                study=slug,
                language=language,
                scenario={"external_id": ext, "title": title, "brief": brief, "hidden_intent": intent},
                rater=rater,
                rater_username=rater_username,
                status=status,
                head_id=head,
                outcome_goal=goal,
                outcome_understanding=und,
                outcome_comment=comment,
                started_at=started,
                ended_at=ended,
            )
        return by_id

    def _load_turns(self, by_id: dict[int, ConversationData], ids: list[int]) -> None:
        """Every turn of the chunk, linked to its parent's `children`.

        Read by depth, then slot position: a parent is always met before its children, and
        siblings are appended in slot order (A, B, …), the order the formats rely on.
        """
        columns = ("conversation_id", *_TURN_COLUMNS, *(_TURN_DETAILS if self.details else ()))
        # Planted attention checks are never data: their tags and the votes that chose them go with them.
        turns = Turn.objects.filter(conversation_id__in=ids, is_attention_check=False).order_by(
            "conversation_id", "depth", "position", "id"
        )
        model_names = self.model_names
        conv_turns: dict[int, TurnRow] = {}
        conv_id = None
        for cid, tid, parent, role, position, text, status, model_id, system, rewrite, tuuid, leak, *details in _rows(
            turns.values_list(*columns)
        ):
            if cid != conv_id:
                conv_id, conv_turns = cid, by_id[cid].turns
            # A rewrite keeps its base reply's model config in the database, but its text is the
            # rater's: attributed to a model it would pass `--model` filters as that model's output.
            model = None if rewrite else model_names.get(model_id)
            turn = TurnRow(
                tid, parent, role, position, text, status, model, system, rewrite, str(tuuid), leak, *details
            )
            conv_turns[tid] = turn
            parent_turn = conv_turns.get(parent)
            if parent_turn is not None:
                parent_turn.children.append(turn)

    def _load_votes(self, by_id: dict[int, ConversationData], ids: list[int]) -> None:
        """Every vote of the chunk, by branch point and then in the order they were cast; not those that failed
        an attention check (they judged a planted nonsense reply) nor those of excluded raters."""
        votes = (
            Comparison.objects.filter(conversation_id__in=ids)
            .exclude(attention_passed=False)
            .order_by("conversation_id", "parent_id", "id")
        )
        if self.excluded:
            votes = votes.exclude(rater_id__in=self.excluded)
        vote_fields = (
            "conversation_id", "id", "parent_id", "task", "choice", "chosen_id", "continued_from_id", "strength",
            "reason", "decision_ms", "rater_id", "created_at",
        )  # fmt: skip
        rater = self._rater
        for cid, vid, parent, task, choice, chosen, cont, strength, reason, ms, rater_id, created in _rows(
            votes.values_list(*vote_fields)
        ):
            by_id[cid].votes.append(
                VoteRow(vid, parent, task, choice, chosen, cont, strength, reason, ms, *rater(rater_id), created)
            )

    def _load_tags(self, by_id: dict[int, ConversationData]) -> None:
        """The confirmed tags on the chunk's turns, with their label from the study's taxonomy.

        Read by the range of the chunk's turn ids, through the tag's turn index and without a
        join; tags of other conversations' turns in that range are skipped here.
        """
        labels = {label.pk: label for label in self.labels}
        owner = {tid: conv for conv in by_id.values() for tid in conv.turns}
        tags = Tag.objects.filter(
            turn_id__gte=min(owner, default=0), turn_id__lte=max(owner, default=0), status=Tag.Status.CONFIRMED
        ).order_by("turn_id", "id")
        if self.excluded:
            tags = tags.exclude(rater_id__in=self.excluded)
        if self.params.raters:  # `--rater` keeps these raters' judgements: their tags as well as their votes
            tags = tags.filter(rater__username__in=self.params.raters)
        tag_fields = (
            "turn_id", "label_id", "rater_id", "task", "source", "span_start", "span_end", "linked_turn_id",
        )  # fmt: skip
        rater = self._rater
        for turn_id, label_id, rater_id, task, source, start, end, linked in _rows(tags.values_list(*tag_fields)):
            label = labels.get(label_id)
            conv = owner.get(turn_id)
            if label is None or conv is None:  # another taxonomy's label (it was changed), or another conversation
                continue
            conv.tags.setdefault(turn_id, []).append(
                TagRow(
                    turn_id,
                    label.name,
                    label.kind,
                    label.polarity,
                    rater(rater_id)[0],
                    task,
                    source,
                    start,
                    end,
                    linked,
                )  # fmt: skip
            )

    def _load_reviewers(self, by_id: dict[int, ConversationData]) -> None:
        """Who covers each conversation in the review pass (open and done reviews) and whose review expired (it
        codes nothing); not excluded raters, and only the `--rater` ones when the export keeps some raters only."""
        reviews = ReviewAssignment.objects.filter(conversation_id__in=list(by_id))
        if self.excluded:
            reviews = reviews.exclude(rater_id__in=self.excluded)
        if self.params.raters:
            reviews = reviews.filter(rater__username__in=self.params.raters)
        for conversation_id, rater_id, status in reviews.order_by("conversation_id", "rater_id").values_list(
            "conversation_id", "rater_id", "status"
        ):
            conv, reviewer = by_id[conversation_id], self._rater(rater_id)[0]
            if status in COVERING_REVIEWS:
                conv.reviewers.append(reviewer)
            elif status == ReviewAssignment.Status.EXPIRED:
                conv.reviewers_gone.add(reviewer)

    def _rater(self, user_id: int) -> tuple[str, str]:
        """(pseudonym, username) of a user; one query for a user who is neither a rater nor a
        voter of the study (a reviewer who only tagged)."""
        found = self.rater_names.get(user_id)
        if found is None:
            name = get_user_model().objects.filter(pk=user_id).values_list("username", flat=True).first() or ""
            found = self.rater_names[user_id] = (pseudonym(user_id), name)
        return found

    def keeps_vote(self, vote: VoteRow) -> bool:
        return not self.params.raters or vote.rater_username in self.params.raters

    def keeps_models(self, *names: str | None) -> bool:
        return not self.params.models or all(name in self.params.models for name in names)


def selection_open(params: ExportParams, *, refuse: Callable[[str], Exception]) -> Selection:
    """Check the parameters against the database; `refuse(message)` builds the error raised."""
    if params.format not in FORMATS:
        raise refuse(f"Unknown format “{params.format}”. Choose one of: {', '.join(FORMATS)}.")
    if params.file_format not in FILE_FORMATS:
        raise refuse(f"Unknown file format “{params.file_format}”. Choose jsonl or parquet.")
    if params.gzip and params.file_format != "jsonl":
        raise refuse("gzip applies to JSONL only (Parquet is compressed already).")
    numbers = (("gamma", params.gamma), ("grounding weight", params.grounding_weight),
               ("minimum agreement", params.min_agreement))  # fmt: skip
    for name, number in numbers:
        if number is not None and not math.isfinite(number):  # NaN would pass the range checks below
            raise refuse(f"The {name} must be a finite number, not {number}.")
    if params.min_agreement is not None and not 0 <= params.min_agreement <= 1:
        raise refuse("The minimum agreement is a share between 0 and 1.")
    if not 0 <= params.gamma <= 1:
        raise refuse("γ (gamma) must be between 0 and 1.")
    if params.segment_turns < 1:
        raise refuse("Segments need at least one message.")
    choices = (("aggregate", params.aggregate, AGGREGATES), ("segments", params.segments, SEGMENT_KINDS),
               ("arena history", params.arena_history, ARENA_HISTORIES))  # fmt: skip
    for name, value, allowed in choices:
        if value not in allowed:
            raise refuse(f"Unknown {name} “{value}”. Choose one of: {', '.join(allowed)}.")
    if params.aggregate != "none" and params.format not in PAIR_FORMATS:
        raise refuse(
            f"--aggregate applies to the pair formats ({', '.join(sorted(PAIR_FORMATS))}), not to {params.format}."
        )
    if params.since and params.until and params.since > params.until:
        raise refuse("The date range is empty: 'since' is after 'until'.")
    try:
        split_shares(params.split)
    except ValueError as exc:
        raise refuse(f"Bad split “{params.split}”: {exc}") from None
    study = Study.objects.filter(slug=params.study).first()
    if study is None:
        known = ", ".join(Study.objects.order_by("slug").values_list("slug", flat=True)) or "none yet"
        raise refuse(f"No study “{params.study}”. Studies: {known}.")
    # Two IN (subquery) tests, not an OR over two joins: that join multiplies each rater's
    # conversations by their votes (minutes at a million comparisons).
    raters = Conversation.objects.filter(study=study).order_by().values("rater_id")
    voters = Comparison.objects.filter(conversation__study=study).order_by().values("rater_id")
    users = get_user_model().objects.filter(pk__in=raters.union(voters))
    usernames = dict(users.values_list("pk", "username"))
    unknown = sorted(set(params.raters) - set(usernames.values()))
    if unknown:
        raise refuse(f"No rater in this study is called: {', '.join(unknown)}.")
    model_names = dict(ModelConfig.objects.values_list("pk", "name"))
    if params.models:
        unknown = sorted(set(params.models) - set(model_names.values()))
        if unknown:
            raise refuse(f"No model config is called: {', '.join(unknown)}.")
    excluded = frozenset(excluded_raters(study).values_list("user_id", flat=True))
    return Selection(
        params=params,
        study=study,
        labels=list(labels_for(study)),
        model_names=model_names,
        rater_names={pk: (pseudonym(pk), name) for pk, name in usernames.items()},
        details=params.format in DETAIL_FORMATS,
        excluded=frozenset() if params.include_excluded else excluded,
        excluded_raters=len(excluded),
        excluded_conversations=Conversation.objects.filter(study=study, rater_id__in=excluded).count()
        if excluded
        else 0,
    )
