"""Exports of committed data read the next chunk in a thread and split large selections across
processes (PostgreSQL outside a transaction). Neither may change a byte of the output, lose a
failure, or leave a process, thread or file behind.

These tests commit their data (`transaction=True`): inside the usual test transaction another
connection sees nothing, and exports then read in line (what every other export test checks).
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction

from exports import build, formats
from exports.build import ExportPartFailed, export_build
from exports.selection import FORMATS, ExportParams, Selection
from tests.exports.export_study import build_export_study
from tests.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def committed() -> dict[str, Any]:
    return build_export_study()


def children() -> list[int]:
    """Live (or unreaped) child processes of this test process."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            found.append(int(stat.parent.name))
    return found


def exported(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.iterdir())}


@pytest.fixture
def split_runs(monkeypatch) -> list[int]:
    """The number of parts of each export that was split across processes."""
    runs: list[int] = []
    real = build.export_parts

    def counting(sel: Selection, spans: list[Any], **kwargs: Any) -> Any:
        runs.append(len(spans))
        return real(sel, spans, **kwargs)

    monkeypatch.setattr(build, "export_parts", counting)
    return runs


@pytest.mark.parametrize(("file_format", "compress"), [("jsonl", False), ("jsonl", True), ("parquet", False)])
def test_read_ahead_and_split_exports_are_byte_identical_to_the_in_line_export(
    committed, tmp_path, split_runs, file_format, compress
):
    for fmt in FORMATS:
        params = ExportParams(study="golden", format=fmt, file_format=file_format, gzip=compress)
        with transaction.atomic():  # another connection would not see this transaction: read in line
            export_build(params=params, out=tmp_path / f"{fmt}-in-line", chunk=1, processes=2)
        assert split_runs == []
        export_build(params=params, out=tmp_path / f"{fmt}-read-ahead", chunk=1, processes=1)
        export_build(params=params, out=tmp_path / f"{fmt}-split", chunk=1, processes=2)
        assert split_runs == [2]  # one chunk per conversation: a part each
        split_runs.clear()
        in_line = exported(tmp_path / f"{fmt}-in-line")
        assert exported(tmp_path / f"{fmt}-read-ahead") == in_line, fmt
        assert exported(tmp_path / f"{fmt}-split") == in_line, fmt
    assert children() == []
    assert not [t for t in threading.enumerate() if t.name == "export-read-ahead"]


def test_a_split_export_reports_progress_from_its_parts(committed, tmp_path, split_runs):
    seen: list[tuple[int, int, int]] = []
    result = export_build(
        params=ExportParams(study="golden", format="kto"),
        out=tmp_path / "out",
        chunk=1,
        processes=4,
        progress=lambda done, total, rows: seen.append((done, total, rows)),
    )
    assert split_runs == [2]  # never more parts than chunks
    assert len(seen) == 2 and seen[-1] == (2, 2, result.rows)
    assert [done for done, _, _ in seen] == [1, 2]


def test_a_failing_part_fails_the_export_and_leaves_nothing(committed, tmp_path, monkeypatch, split_runs):
    second = committed["c2"].pk

    def failing(conv, sel):
        if conv.id == second:
            raise RuntimeError("disk on fire")
        yield from formats.dpo_rows(conv, sel)

    monkeypatch.setitem(formats.BUILDERS, "dpo", failing)  # the forked parts inherit it
    with pytest.raises(ExportPartFailed, match="export-part-1 failed: RuntimeError: disk on fire"):
        export_build(params=ExportParams(study="golden", format="dpo"), out=tmp_path / "out", chunk=1, processes=2)
    assert split_runs == [2]
    assert list(tmp_path.iterdir()) == []  # neither output, staging directory nor part files
    assert children() == []


def test_a_read_ahead_failure_reaches_the_caller_and_stops_the_thread(committed, tmp_path, monkeypatch):
    real = Selection._load
    calls: list[int] = []

    def second_fails(self: Selection, rows: Any) -> Any:
        calls.append(len(rows))
        if len(calls) == 2:
            raise RuntimeError("connection lost")
        return real(self, rows)

    monkeypatch.setattr(Selection, "_load", second_fails)
    with pytest.raises(RuntimeError, match="connection lost"):
        export_build(params=ExportParams(study="golden", format="tree"), out=tmp_path / "out", chunk=1, processes=1)
    assert list(tmp_path.iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name == "export-read-ahead"]


def test_a_worker_splits_an_export_into_processes(committed, tmp_path, start_worker, settings):
    """Inside a real Celery worker (a prefork child) the parts are forked, and the file is the
    one written in line."""
    from exports.models import DatasetExport
    from exports.services import export_request

    exports = tmp_path / "exports"
    exports.mkdir()
    worker = start_worker(EXPORT_DIR=str(exports), EXPORT_PROCESSES="2", EXPORT_CHUNK_CONVERSATIONS="1")
    params = ExportParams(study="golden", format="dpo", file_format="parquet")
    export = export_request(params=params, requested_by=None)
    wait_until(lambda: DatasetExport.objects.get(pk=export.pk).is_finished, timeout=120, what="the export to finish")
    export.refresh_from_db()
    assert (export.status, export.error) == ("done", ""), worker.output()[-3000:]
    assert "Export of golden as dpo: 2 conversations in 2 processes" in worker.output()
    with transaction.atomic():
        reference = export_build(params=params, out=tmp_path / "in-line", chunk=1, processes=1)
    data = (Path(export.out_dir) / "dpo.parquet").read_bytes()
    assert data == reference.data_file.read_bytes()
    assert hashlib.sha256(data).hexdigest() == export.sha256


def test_the_command_splits_with_processes(committed, tmp_path, settings, split_runs):
    from django.core.management import call_command

    settings.EXPORT_CHUNK_CONVERSATIONS = 1
    call_command("export_dataset", "--study", "golden", "--format", "reward", "--out", str(tmp_path / "two"),
                 "--processes", "2", "--quiet")  # fmt: skip
    call_command("export_dataset", "--study", "golden", "--format", "reward", "--out", str(tmp_path / "one"),
                 "--processes", "1", "--quiet")  # fmt: skip
    assert split_runs == [2]
    assert exported(tmp_path / "two") == exported(tmp_path / "one")


def test_small_selections_are_cut_into_enough_chunks_to_balance_the_parts(settings):
    from exports.build import chunk_for

    settings.EXPORT_CHUNK_CONVERSATIONS = 400
    assert [chunk_for(n) for n in (2, 800, 2000, 6400, 20000, 10**6)] == [50, 50, 125, 400, 400, 400]
    settings.EXPORT_CHUNK_CONVERSATIONS = 1
    assert chunk_for(2000) == 1
