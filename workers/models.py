"""Model configurations: which backend samples a candidate, with what prompt and decoding."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.db import models

from workers.apikeys import api_key_env_refusal
from workers.params import DEFAULT_PARAMS, PARAM_NAMES, generation_params

# The API root's path must name a version ("/v1", "/api/v1", "/openai/v1", "/v1beta/openai"): a bare
# "http://host:8000" is the commonest mistake, and every request to it would 404 in the worker.
_VERSION_SEGMENT = re.compile(r"v\d+[a-z0-9]*", re.IGNORECASE)
_ENDPOINT_SUFFIXES = ("/chat/completions", "/completions", "/models", "/responses", "/embeddings")


def base_url_refusal(url: str) -> str | None:
    """Why `url` is not an OpenAI-compatible API root, or None. The worker appends /chat/completions to it, so
    it must be http(s) with a host, carry no credentials (keys live in environment variables), no query or
    fragment, and end at the API root (a version segment in the path, not an endpoint)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        return f"Not a URL: {exc}."
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "The base URL must be http:// or https:// with a host, e.g. http://host:8000/v1."
    if parts.username or parts.password:
        return "Put no credentials in the base URL: name the variable holding the API key in 'API key env'."
    if parts.query or parts.fragment:
        return "The base URL must have no query (?…) or fragment (#…): it is the API root, e.g. http://host:8000/v1."
    path = parts.path.rstrip("/")
    endpoint = next((suffix for suffix in _ENDPOINT_SUFFIXES if path.endswith(suffix)), None)
    if endpoint:
        return f"That is an endpoint, not the API root: leave out {endpoint!r} (the worker adds it), e.g. …/v1."
    if not any(_VERSION_SEGMENT.fullmatch(segment) for segment in path.split("/")):
        return "The base URL must be the API root, with its version in the path: e.g. http://host:8000/v1."
    return None


class ModelConfig(models.Model):
    """One entry of a study's model pool.

    Two configs may share weights and differ only in system prompt or decoding: that is a
    legitimate comparison (e.g. a "clarify first" policy against a plain one).
    """

    class Backend(models.TextChoices):
        TRANSFORMERS = "transformers", "Hugging Face transformers (in the worker)"
        OPENAI = "openai", "OpenAI-compatible server"

    class PromptFormat(models.TextChoices):
        AUTO = "auto", "Chat template if the model has one, else plain"
        CHAT_TEMPLATE = "chat_template", "Chat template"
        PLAIN = "plain", "Plain 'User:/Assistant:' transcript"

    name = models.SlugField(max_length=80, unique=True)
    description = models.CharField(max_length=300, blank=True)
    backend = models.CharField(max_length=20, choices=Backend.choices, default=Backend.TRANSFORMERS)
    model_path = models.CharField(
        max_length=500,
        blank=True,
        help_text="transformers: a local directory, or 'gemma3-270m' for the bundled Gemma 3 270M "
        "package. OpenAI: the model name sent to the server.",
    )
    gguf_file = models.CharField(max_length=200, blank=True, help_text="GGUF file inside model_path.")
    base_url = models.URLField(blank=True, help_text="OpenAI-compatible server, e.g. http://host:8000/v1")
    api_key_env = models.CharField(
        max_length=100, blank=True, help_text="Name of the environment variable holding the API key."
    )
    prompt_format = models.CharField(max_length=20, choices=PromptFormat.choices, default=PromptFormat.AUTO)
    system_prompt = models.TextField(blank=True)
    params = models.JSONField(default=dict, blank=True, help_text=f"Overrides of {DEFAULT_PARAMS}")
    identity_names = models.CharField(
        max_length=300,
        blank=True,
        help_text="Names this model may call itself or its maker, comma separated (e.g. Gemma, Google, DeepMind): "
        "masked in its replies in arena studies, and such a battle is flagged.",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        unknown = set(self.params or {}) - PARAM_NAMES
        if unknown:
            raise ValidationError({"params": f"Unknown parameters: {', '.join(sorted(unknown))}"})
        if self.backend == self.Backend.OPENAI and not self.base_url:
            raise ValidationError({"base_url": "An OpenAI-compatible config needs a base URL."})
        if self.base_url:
            refusal = base_url_refusal(self.base_url)
            if refusal:
                raise ValidationError({"base_url": refusal})
        if self.backend == self.Backend.TRANSFORMERS and not self.model_path:
            raise ValidationError({"model_path": "A transformers config needs a model path."})
        refusal = api_key_env_refusal(self.api_key_env)
        if refusal:
            raise ValidationError({"api_key_env": refusal})

    def effective_params(self) -> dict[str, Any]:
        """Defaults overlaid with this config's parameters: the snapshot stored on each turn."""
        return generation_params(self.params)
