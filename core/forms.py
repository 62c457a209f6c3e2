"""Form fields for what staff type in admin, with the same refusals as `core.validation`."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db import models
from django.forms.fields import InvalidJSONInput

from core.errors import ActionRefused
from core.validation import check_structure


class StorableJSONField(forms.JSONField):
    """Django's JSON form field, also refusing (as a form error, not a 500) JSON nested past the stack,
    or holding what PostgreSQL's jsonb cannot store: NUL, lone surrogates, NaN and infinities."""

    def to_python(self, value: Any) -> Any:
        try:
            converted = super().to_python(value)
        except RecursionError:
            raise ValidationError("The JSON is nested too deep.", code="invalid") from None
        if self.disabled:
            return converted
        try:
            check_structure(converted, what="The JSON")
        except ActionRefused as exc:
            raise ValidationError(exc.message, code="invalid") from None
        return converted

    def bound_data(self, data: Any, initial: Any) -> Any:
        """What the form shows again: refused JSON as typed (a lone surrogate, re-encoded, would break the page)."""
        try:
            bound = super().bound_data(data, initial)
            if not isinstance(bound, InvalidJSONInput) and not self.disabled:
                check_structure(bound, what="The JSON")
        except (RecursionError, ActionRefused):
            return InvalidJSONInput(data)
        return bound


# For a ModelAdmin's or an inline's `formfield_overrides`: every JSONField gets `StorableJSONField`.
JSON_FORMFIELDS: dict[type[models.Field[Any, Any]], dict[str, Any]] = {
    models.JSONField: {"form_class": StorableJSONField}
}
