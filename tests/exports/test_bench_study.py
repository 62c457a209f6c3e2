"""The export bench's SQL-generated study stays one the app can read: its INSERTs name every NOT NULL column of
today's schema (a column added by a migration without a database default broke the bench twice unnoticed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connection

from annotate.models import Comparison, Conversation, Turn
from exports.build import export_build
from exports.selection import ExportParams

ROOT = Path(__file__).resolve().parents[2]


def _bench(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # it imports its neighbour `common`, as a script does
    spec = importlib.util.spec_from_file_location("export_throughput", ROOT / "bench" / "export_throughput.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.django_db(transaction=True)
def test_the_export_bench_generates_a_study_every_format_exports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = _bench(monkeypatch)
    settings = connection.settings_dict
    dsn = f"host={settings['HOST']} port={settings['PORT']} user={settings['USER']} dbname={settings['NAME']}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        shared = bench.shared_rows(conn)
        study_id = bench.study_create(10, shared)
        bench.study_generate(conn, study_id, 2, shared)
    assert Conversation.objects.filter(study_id=study_id).count() == 2
    assert Comparison.objects.filter(conversation__study_id=study_id).count() == 2 * bench.TURNS_PER_CONVERSATION
    assert Turn.objects.filter(conversation__study_id=study_id).exclude(uuid=None).count() == 30
    slug = bench.slug_for(10)
    for fmt in ("dpo", "tree", "arena"):
        result = export_build(params=ExportParams(study=slug, format=fmt), out=tmp_path / fmt)
        assert result.rows > 0, fmt
