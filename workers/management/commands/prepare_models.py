from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from workers import backends
from workers.models import ModelConfig


class Command(BaseCommand):
    help = (
        "Download/convert the weights of every enabled transformers model config once, with progress, so "
        "workers start in seconds. The bundled GGUF model is de-quantised into MODEL_CACHE_DIR (~1-2 min once)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--config", action="append", help="Only these config names (repeatable)")

    def handle(self, *args: Any, **options: Any) -> None:
        configs = ModelConfig.objects.filter(enabled=True, backend=ModelConfig.Backend.TRANSFORMERS)
        if options["config"]:
            configs = configs.filter(name__in=options["config"])
        seen: set[tuple[str, str]] = set()
        for config in configs:
            key = (config.model_path, config.gguf_file)
            if key in seen:
                continue
            seen.add(key)
            # Only a model still to convert takes minutes: a later start must not announce a wait it will not have.
            first = "" if backends.model_prepared(config.model_path, config.gguf_file) else " (first time: 1-2 minutes)"
            self.stdout.write(f"Preparing {config.model_path} {config.gguf_file}{first}...")
            started = time.monotonic()
            directory = backends.resolve_model_dir(config.model_path, config.gguf_file)
            self.stdout.write(self.style.SUCCESS(f"  ready in {time.monotonic() - started:.1f} s: {directory}"))
