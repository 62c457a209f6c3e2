from __future__ import annotations

import os
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import URLPattern, path

from core.forms import JSON_FORMFIELDS
from core.validation import unstorable
from workers import ops
from workers.apikeys import api_key_env_refusal
from workers.models import ModelConfig


class ModelConfigForm(forms.ModelForm):
    """Refuses an API key variable that is not set in this (web) process: a config that would send no key.

    Here and not in `ModelConfig.clean`, because whether a variable is set is a fact of the process that saves,
    not of the row: a model check would make the same row valid on one machine and invalid on another. The web
    and the workers may have different environments; this checks the web's, as the issue asks, and the help
    text says to set the variable on every worker machine too (a worker without it fails the reply, and the
    rater may retry)."""

    def clean_api_key_env(self) -> str:
        name: str = self.cleaned_data.get("api_key_env", "")
        # A name outside the allowed prefix is refused by ModelConfig.clean, with that reason.
        if name and not api_key_env_refusal(name) and not os.environ.get(name):
            raise forms.ValidationError(
                f"The API key variable {name} is not set in the web server's environment: set it there and on "
                "every worker machine (then restart them), or leave this empty for a server without a key."
            )
        return name


class ProbeForm(forms.Form):
    prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "cols": 80}),
        max_length=4000,
        initial="Hello! In one sentence, who are you?",
    )

    def clean_prompt(self) -> str:
        prompt: str = self.cleaned_data["prompt"]
        problem = unstorable(prompt)
        if problem:
            raise forms.ValidationError(f"The prompt {problem}.")
        return prompt


@admin.register(ModelConfig)
class ModelConfigAdmin(admin.ModelAdmin):
    form = ModelConfigForm
    list_display = ("name", "backend", "model_path", "prompt_format", "enabled")
    list_filter = ("backend", "enabled")
    search_fields = ("name", "model_path", "description")
    formfield_overrides = JSON_FORMFIELDS
    change_form_template = "admin/workers/modelconfig/change_form.html"
    change_list_template = "admin/workers/modelconfig/change_list.html"

    def get_urls(self) -> list[URLPattern]:
        custom = [
            path("health/", self.admin_site.admin_view(self.health), name="workers_modelconfig_health"),
            path(
                "<int:pk>/test-prompt/",
                self.admin_site.admin_view(self.test_prompt),
                name="workers_modelconfig_test_prompt",
            ),
        ]
        return custom + super().get_urls()

    def test_prompt(self, request: HttpRequest, pk: int) -> HttpResponse:
        """Send one prompt through the config and show latency, tokens/s and the output. Synchronous, in this
        process, bounded by `ops.PROBE_TIMEOUT_SECONDS`: staff want the answer on the page, this app keeps no
        Celery results to wait on, and it checks the server from here, where the config is saved. It may reach
        the configured server, so it needs `workers.change_modelconfig`."""
        config = get_object_or_404(ModelConfig, pk=pk)
        if not self.has_change_permission(request, config):
            raise PermissionDenied
        form = ProbeForm(request.POST or None)
        result, status = None, 200
        if request.method == "POST":
            if form.is_valid():
                result = ops.model_probe(config, form.cleaned_data["prompt"])
            else:
                status = 400
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "title": f"Test prompt: {config.name}",
            "config": config,
            "opts": self.model._meta,
            "form": form,
            "result": result,
            "timeout": ops.PROBE_TIMEOUT_SECONDS,
        }
        return render(request, "admin/workers/modelconfig/test_prompt.html", context, status=status)

    def health(self, request: HttpRequest) -> HttpResponse:
        """Every config's status and recent error rate, queue depths and workers: `workers.view_modelconfig`."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": "Model health",
            "opts": self.model._meta,
            "health": ops.model_health(fresh="refresh" in request.GET),
            "window_minutes": int(ops.HEALTH_WINDOW.total_seconds() // 60),
            "cache_seconds": ops.HEALTH_CACHE_SECONDS,
        }
        return render(request, "admin/workers/modelconfig/health.html", context)
