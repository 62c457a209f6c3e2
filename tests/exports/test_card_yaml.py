"""The dataset card's YAML front matter: free text in it (licence, study name) stays one value,
whatever newlines, colons or `---` it holds, for YAML and for the Hub's own card parser."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from huggingface_hub import DatasetCard

from annotate.models import Study
from tests.exports.export_study import build_export_study, export

pytestmark = pytest.mark.django_db

HEADER_KEYS = {"license", "pretty_name", "language", "tags", "configs", "dataset_info"}


def front_matter(out: Path) -> dict[str, Any]:
    card = (out / "README.md").read_text()
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, card[:200]
    header = yaml.safe_load(match[1])
    # The Hub reads the card with its own parser: it must see the same header.
    assert DatasetCard.load(out / "README.md").data.to_dict() == header
    return header


def test_a_licence_with_a_newline_is_one_string_and_adds_no_key(tmp_path: Path) -> None:
    build_export_study()

    _, out = export(tmp_path, format="dpo", licence="mit\nevil: 1")

    header = front_matter(out)
    assert header["license"] == "mit\nevil: 1"
    assert set(header) == HEADER_KEYS


def test_a_study_name_that_looks_like_yaml_or_ends_the_front_matter_stays_the_title(tmp_path: Path) -> None:
    build_export_study()
    Study.objects.filter(slug="golden").update(name="Party: v2\n---\nevil: 1\nconfigs: []")

    _, out = export(tmp_path, format="kto", licence="cc-by-4.0")

    header = front_matter(out)
    assert header["pretty_name"] == "Party: v2\n---\nevil: 1\nconfigs: []: kto"
    assert set(header) == HEADER_KEYS
    assert header["license"] == "cc-by-4.0"
    assert header["configs"][0]["data_files"] == [{"split": "train", "path": "kto.jsonl"}]
