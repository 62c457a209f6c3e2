"""Filters for the tag bar (labeling/_tag_bar.html), which templates include with plain values."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from django import template

from annotate.models import Turn
from labeling.models import Label, Tag

register = template.Library()

EXCERPT_CHARS = 40


@register.filter
def for_turn(labels: Iterable[Label], turn: Turn) -> list[Label]:
    """The labels this turn can carry (`Label.offered_on`: its role; no feedback on the first message)."""
    return [label for label in labels if label.offered_on(turn.role, turn.depth)]


@register.filter
def linking(labels: Iterable[Label]) -> bool:
    """Whether any of the labels points at an earlier turn (then the bar offers a turn to link)."""
    return any(label.links_turn for label in labels)


@register.filter
def earlier_than(turns: Iterable[Turn] | None, turn: Turn) -> list[Turn]:
    """The turns a tag on `turn` may link to: those above it on the path."""
    return [t for t in turns or () if t.depth < turn.depth and t.pk != turn.pk]


@register.filter
def has_later_message(turn: Turn, path: Iterable[Turn]) -> bool:
    """Whether the rater wrote again after this message (then its labels are folded away in the session)."""
    return turn.role == Turn.Role.USER and any(t.role == Turn.Role.USER and t.depth > turn.depth for t in path)


@register.filter
def tags_of(tags_by_turn: Mapping[int, list[Tag]] | None, turn: Turn) -> list[Tag]:
    return list((tags_by_turn or {}).get(turn.pk, ()))


@register.filter
def span_text(tag: Tag, turn: Turn) -> str:
    """The tagged span, shortened for a chip."""
    if tag.span_start is None or tag.span_end is None:
        return ""
    text = turn.text[tag.span_start : tag.span_end]
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"
