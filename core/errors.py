"""The project's one error type: an action a user asked for that cannot be done."""

from __future__ import annotations


class ActionRefused(Exception):
    """An action that cannot be done, with the message to show and the HTTP status to answer with.

    Services raise it before writing anything; `core.http` turns it into a response. `link` (a URL,
    with `link_text`) is where the user can go to make the action possible (e.g. a qualification to take
    before work); the error fragment and page show it under the message.
    """

    def __init__(
        self,
        message: str,
        status: int = 400,
        *,
        link: str = "",
        link_text: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.link = link
        self.link_text = link_text or link
        # Sent with the refusal's response, e.g. {"Retry-After": "12"} on a 429.
        self.headers = dict(headers or {})
