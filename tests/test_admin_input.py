"""Admin forms refuse, as a form error and not a 500, what PostgreSQL cannot store or Python cannot parse:
JSON nested past the stack, NUL and lone surrogates (JSON escapes), NaN. Nothing is written."""

from __future__ import annotations

import pytest
from django.urls import reverse

from workers.models import ModelConfig

pytestmark = pytest.mark.django_db

BAD_JSON = [
    ('{"a": "\\u0000"}', "contains a NUL character"),
    ('{"a": "\\ud800"}', "contains a lone surrogate"),
    ("[" * 5000 + "]" * 5000, "nested too deep"),
    ('{"temperature": NaN}', "number JSON cannot hold"),
]


@pytest.mark.parametrize(("params", "fragment"), BAD_JSON)
def test_model_config_json_is_refused_in_the_form(admin_client, params, fragment):
    data = {"name": "bad", "backend": "openai", "prompt_format": "auto", "params": params, "enabled": "on"}
    response = admin_client.post(reverse("admin:workers_modelconfig_add"), data)
    assert response.status_code == 200 and fragment in response.content.decode()
    assert not ModelConfig.objects.filter(name="bad").exists()


@pytest.mark.parametrize(("metadata", "fragment"), BAD_JSON)
def test_scenario_metadata_is_refused_in_the_form(admin_client, make_study, metadata, fragment):
    scenario = make_study(scenarios=1).scenarios.get()
    data = {"study": scenario.study_id, "external_id": "x", "title": "t", "brief": "b", "metadata": metadata}
    response = admin_client.post(reverse("admin:annotate_scenario_change", args=[scenario.pk]), data)
    assert response.status_code == 200 and fragment in response.content.decode()
    scenario.refresh_from_db()
    assert (scenario.external_id, scenario.metadata) == ("sc-0", {})


def test_changelist_search_with_a_nul_is_not_a_500(admin_client):
    response = admin_client.get(reverse("admin:annotate_scenario_changelist") + "?q=a%00b")
    assert response.status_code < 500
