"""Names a model writes about itself: found and masked, so that blind comparisons stay blind.

A model asked "who are you?" answers with its own or its maker's name; a rater who reads it knows
which model wrote the reply, and an arena battle judged that way is no longer blind (Chatbot Arena
drops such battles from its leaderboard). `ModelConfig.identity_names` lists the names to look for.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

MASK = "[model name hidden]"

IdentityCheck = Callable[[str], tuple[str, bool]]


def identity_names(value: str) -> tuple[str, ...]:
    """The names of a config's comma-separated `identity_names`, blanks and repeats dropped, longest first (so
    "Gemma 3" is masked whole before "Gemma")."""
    names = {name.strip() for name in value.split(",") if name.strip()}
    return tuple(sorted(names, key=lambda name: (-len(name), name.lower())))


@lru_cache(maxsize=256)
def _pattern(names: tuple[str, ...]) -> re.Pattern[str]:
    # Whole words only, any case: "Gemma" and "gemma's", not "dilemma".
    return re.compile("|".join(rf"(?<!\w){re.escape(name)}(?!\w)" for name in names), re.IGNORECASE)


def identity_masked(text: str, names: tuple[str, ...]) -> tuple[str, bool]:
    """`text` with every name replaced by MASK, and whether there was one."""
    if not names or not text:
        return text, False
    masked, found = _pattern(names).subn(MASK, text)
    return masked, found > 0


def identity_check(value: str, *, mask: bool) -> IdentityCheck | None:
    """text → (the text to show and store, whether it names the model): masked when `mask` (arena studies),
    only flagged otherwise; None when the config lists no names."""
    names = identity_names(value)
    if not names:
        return None

    def check(text: str) -> tuple[str, bool]:
        masked, leaked = identity_masked(text, names)
        return (masked if mask else text), leaked

    return check
