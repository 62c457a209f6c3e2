"""Checks for what users type, post and upload: free text, optional notes, numbers, request keys,
uploaded files and the structured data (JSON, YAML) read from them.

Each refuses bad input with an `ActionRefused` carrying a message a user can act on, before anything
is written: text PostgreSQL cannot store (NUL, lone surrogates), nesting that would exhaust the
stack, numbers no column holds, files over `settings.IMPORT_MAX_BYTES`.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from typing import Any, Protocol

import yaml
from django.conf import settings

from core.errors import ActionRefused

NOTE_LIMIT = 4000
# Whole numbers posted by forms: ASCII digits only ("²".isdigit() is True, int("²") fails), and at most
# 18 of them, so every value fits a 64-bit column.
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]{1,18}")
_ID = re.compile(r"[0-9]{1,18}")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Structured input (a scenario's metadata, a taxonomy document): deeper than this is refused.
MAX_DEPTH = 20
MAX_NODES = 200_000


def clean_text(text: str | None, *, limit: int, what: str = "message") -> str:
    """Validate free text a rater wrote. Stored as typed; templates escape it on display."""
    text = (text or "").strip()
    if not text:
        raise ActionRefused(f"The {what} is empty: write something first.")
    check_storable(text, what=f"The {what}")
    if len(text) > limit:
        raise ActionRefused(f"The {what} is {len(text):,} characters long; the limit is {limit:,}.", status=413)
    return text


def clean_note(text: str | None, *, what: str) -> str:
    """Validate an optional free-text note (a vote's reason, the survey comment); empty is fine."""
    text = (text or "").strip()
    if len(text) > NOTE_LIMIT or unstorable(text):
        raise ActionRefused(f"The {what} is too long ({NOTE_LIMIT:,} characters at most) or malformed.")
    return text


def parse_int(value: str | None, *, name: str) -> int | None:
    """A posted whole number (ASCII digits, optional sign, fits 64 bits); None when absent or empty."""
    if value is None or value == "":
        return None
    if not _WHOLE_NUMBER.fullmatch(value.strip()):
        raise ActionRefused(f"{name} must be a whole number, not {value[:20]!r}.")
    return int(value)


def is_id(value: str) -> bool:
    """Whether a posted value is a row id (ASCII digits that fit a 64-bit column), not a name."""
    return bool(_ID.fullmatch(value))


def unstorable(text: str) -> str | None:
    """Why PostgreSQL cannot store `text` (a NUL, a lone surrogate), or None."""
    if "\x00" in text:
        return "contains a NUL character"
    if _SURROGATE.search(text):
        return "contains a lone surrogate (not valid Unicode)"
    return None


def check_storable(text: str, *, what: str) -> str:
    """`text` unchanged, or a refusal naming `what` when it cannot be stored."""
    problem = unstorable(text)
    if problem:
        raise ActionRefused(f"{what} {problem}, which cannot be stored.")
    return text


def check_structure(value: Any, *, what: str, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> None:
    """Refuse structured data (parsed JSON or YAML) that could not be stored or walked safely: nesting
    deeper than `max_depth` (a scalar is depth 0), more than `max_nodes` values (YAML aliases can make
    a small file a huge tree), strings or keys with NUL or lone surrogates, non-string keys, and numbers
    JSON cannot hold (NaN, infinities). Messages name the place ('labels[2].title'). Iterative, so a
    deep value cannot exhaust the stack here."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    nodes = 0
    while stack:
        item, depth, path = stack.pop()
        where = f"{what}: '{path}'" if path else what
        nodes += 1
        if nodes > max_nodes:
            raise ActionRefused(f"{what} has more than {max_nodes:,} values.")
        if isinstance(item, dict | list):
            if depth >= max_depth:
                raise ActionRefused(f"{where} is nested more than {max_depth} levels deep.")
            if isinstance(item, dict):
                for key in item:
                    if not isinstance(key, str):
                        raise ActionRefused(f"{where} has a key that is not text: {str(key)[:40]!r}.")
                    check_storable(key, what=f"{what}: the field name {key[:40]!r}")
                stack.extend((child, depth + 1, f"{path}.{key}" if path else key) for key, child in item.items())
            else:
                stack.extend((child, depth + 1, f"{path}[{i}]") for i, child in enumerate(item))
        elif isinstance(item, str):
            check_storable(item, what=where)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ActionRefused(f"{where} is a number JSON cannot hold ({item}).")


def parse_json(text: str, *, what: str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON, refusing what does not parse, nests too deep, or could not be stored (`check_structure`)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ActionRefused(f"{what} is nested too deep.") from None
    except ValueError as exc:  # JSONDecodeError, and integers over Python's digit limit
        raise ActionRefused(f"{what} is not valid JSON: {getattr(exc, 'msg', exc)}") from None
    check_structure(value, what=what, max_depth=max_depth)
    return value


def parse_yaml(text: str) -> Any:
    """Parse YAML (safe loader), refusing what does not parse or nests too deep for the parser."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ActionRefused(f"The YAML does not parse: {exc}") from None
    except RecursionError:
        raise ActionRefused("The YAML is nested too deep.") from None


class Upload(Protocol):
    """What `read_upload` needs of an uploaded file (Django's UploadedFile)."""

    name: str | None
    size: int | None

    def read(self, size: int = -1, /) -> bytes: ...


def read_upload(upload: Upload, *, limit: int | None = None) -> bytes:
    """The bytes of an uploaded file, refused (413) when it is larger than `limit`
    (`settings.IMPORT_MAX_BYTES` unless given). The size is checked before anything is read;
    at most `limit` + 1 bytes are ever read, in case the size reported is wrong."""
    limit = settings.IMPORT_MAX_BYTES if limit is None else limit
    too_big = ActionRefused(f"The file is larger than the limit of {limit:,} bytes.", status=413)
    if upload.size is not None and upload.size > limit:
        raise too_big
    data = upload.read(limit + 1)
    if len(data) > limit:
        raise too_big
    return data


def parse_request_key(value: str | None) -> uuid.UUID:
    """The idempotency key a form carries, so a resent post is stored once."""
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError):
        raise ActionRefused("The form is missing its request key; reload the page and try again.") from None
