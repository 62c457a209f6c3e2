"""Which environment variables a model config may read its API key from: only those whose name starts
with ``settings.MODEL_API_KEY_ENV_PREFIX`` (default ``CG_MODEL_KEY_``), so a config typed in admin can
never make a worker send SECRET_KEY, DATABASE_URL or any other secret of the deployment to a model server.
"""

from __future__ import annotations

import re

from django.conf import settings

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def api_key_env_refusal(name: str) -> str | None:
    """Why a config may not read its API key from the variable `name`, or None when it may ("" reads none)."""
    if not name:
        return None
    prefix = settings.MODEL_API_KEY_ENV_PREFIX
    if not _NAME.fullmatch(name):
        return f"{name[:100]!r} is not an environment variable name (letters, digits and _)."
    if not name.startswith(prefix):
        return (
            f"The API key variable must be named {prefix}<something>, not {name}: model configs may only read "
            f"environment variables whose name starts with {prefix} (MODEL_API_KEY_ENV_PREFIX)."
        )
    return None
