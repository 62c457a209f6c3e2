"""`prepare_models` (run by `make run` at every start) announces the 1-2 minute conversion only when there is one."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db


class _Saved:
    """Stands in for a model or tokenizer: saving writes the file the conversion's cache check looks for."""

    config = object()

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> _Saved:
        return cls()

    @classmethod
    def from_config(cls, config: Any) -> _Saved:
        return cls()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def save_pretrained(self, directory: Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "config.json").write_text("{}")


def prepare() -> str:
    out = io.StringIO()
    call_command("prepare_models", stdout=out)
    return out.getvalue()


def test_the_first_time_note_shows_only_before_the_model_is_converted(make_config, settings, tmp_path, monkeypatch):
    # Given a GGUF model not converted yet (the conversion itself stubbed: the real one takes minutes)
    settings.MODEL_CACHE_DIR = tmp_path / "cache"
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "tiny.gguf").write_bytes(b"GGUF")
    make_config("tiny-gguf", model_path=str(weights), gguf_file="tiny.gguf")
    # (by name: another test may have put a fresh transformers module in sys.modules since collection)
    monkeypatch.setattr("transformers.AutoTokenizer", _Saved)
    monkeypatch.setattr("transformers.AutoModelForCausalLM", _Saved)

    # When it is prepared twice
    first, second = prepare(), prepare()

    # Then the first start says it takes a while, the second does not
    assert "(first time: 1-2 minutes)" in first
    assert "Preparing" in second and "first time" not in second
    assert list((tmp_path / "cache" / "converted").glob("tiny-*/config.json"))


def test_a_plain_model_directory_is_never_announced_as_a_long_first_time(tiny_config):
    tiny_config()
    out = prepare()
    assert "Preparing" in out and "first time" not in out
