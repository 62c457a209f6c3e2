"""The project's one error type: an action a user asked for that cannot be done."""

from __future__ import annotations


class ActionRefused(Exception):
    """An action that cannot be done, with the message to show and the HTTP status to answer with.

    Services raise it before writing anything; `core.http` turns it into a response.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
