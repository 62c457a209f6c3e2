from __future__ import annotations

from django.contrib import admin

from core.forms import JSON_FORMFIELDS
from workers.models import ModelConfig


@admin.register(ModelConfig)
class ModelConfigAdmin(admin.ModelAdmin):
    list_display = ("name", "backend", "model_path", "prompt_format", "enabled")
    list_filter = ("backend", "enabled")
    search_fields = ("name", "model_path", "description")
    formfield_overrides = JSON_FORMFIELDS
