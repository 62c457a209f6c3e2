"""Checks for what users type and post: free text, optional notes, numbers and request keys.

Each refuses bad input with an `ActionRefused` carrying a message a rater can act on.
"""

from __future__ import annotations

import uuid

from core.errors import ActionRefused

NOTE_LIMIT = 4000


def clean_text(text: str | None, *, limit: int, what: str = "message") -> str:
    """Validate free text a rater wrote. Stored as typed; templates escape it on display."""
    text = (text or "").strip()
    if not text:
        raise ActionRefused(f"The {what} is empty: write something first.")
    if "\x00" in text:
        raise ActionRefused(f"The {what} contains a NUL character, which cannot be stored.")
    if len(text) > limit:
        raise ActionRefused(f"The {what} is {len(text):,} characters long; the limit is {limit:,}.", status=413)
    return text


def clean_note(text: str | None, *, what: str) -> str:
    """Validate an optional free-text note (a vote's reason, the survey comment); empty is fine."""
    text = (text or "").strip()
    if len(text) > NOTE_LIMIT or "\x00" in text:
        raise ActionRefused(f"The {what} is too long ({NOTE_LIMIT:,} characters at most) or malformed.")
    return text


def parse_int(value: str | None, *, name: str) -> int | None:
    """A posted whole number; None when absent or empty."""
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ActionRefused(f"{name} must be a whole number, not {value[:20]!r}.") from None


def parse_request_key(value: str | None) -> uuid.UUID:
    """The idempotency key a form carries, so a resent post is stored once."""
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError):
        raise ActionRefused("The form is missing its request key; reload the page and try again.") from None
