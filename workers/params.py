"""Generation parameters: which a model config may set, and the defaults for those it does not.

The one place a default lives. `ModelConfig.effective_params` stores the overlay on each turn (so
a turn keeps the parameters it was sampled with), and both backends read a request's parameters
through `generation_params`, so a request that lacks a key gets the same value everywhere.
No Django here: the backends read it without the app registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULT_PARAMS: dict[str, Any] = {
    "temperature": 0.8,
    "top_p": 0.95,
    "max_new_tokens": 96,
    "min_new_tokens": 0,
    "repetition_penalty": 1.0,
}
# Parameters without a default: absent means none (`stop`: strings that end the reply).
OPTIONAL_PARAMS = frozenset({"stop"})
PARAM_NAMES = frozenset(DEFAULT_PARAMS) | OPTIONAL_PARAMS


def generation_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """`DEFAULT_PARAMS` overlaid with `params` (keys it sets win; unknown keys are kept as they are)."""
    return {**DEFAULT_PARAMS, **(params or {})}


def stop_strings(params: Mapping[str, Any]) -> list[str]:
    """The stop strings `params` asks for, in order (none by default)."""
    return list(params.get("stop") or [])
