"""The export command at its edges: non-finite numbers, bad dates, an output under a file, and a
SIGTERM mid-export (issue 13, item 7)."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest
from django.core.management import call_command

from core.errors import ActionRefused
from exports import formats
from exports.management.commands.export_dataset import Command
from tests.exports.export_study import build_export_study, export

pytestmark = pytest.mark.django_db


@pytest.fixture
def story() -> dict[str, Any]:
    return build_export_study()


def run_from_argv(*args: str) -> None:
    """The command as `manage.py export_dataset …` runs it: errors as a shell user sees them."""
    Command().run_from_argv(["manage.py", "export_dataset", *args])


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_grounding_weight_is_refused(story, tmp_path, value):
    with pytest.raises(ActionRefused, match="grounding weight must be a finite number"):
        export(tmp_path, format="multiturn", grounding_weight=float(value))
    assert list(tmp_path.iterdir()) == []


def test_the_command_refuses_nan_with_a_message_and_no_traceback(story, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        run_from_argv("--study", "golden", "--format", "multiturn", "--out", str(out), "--grounding-weight", "nan")
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "grounding weight must be a finite number" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_finite_weight_writes_a_strict_json_manifest(story, tmp_path):
    _, out = export(tmp_path, format="multiturn", grounding_weight=0.5)

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in manifest.json")

    assert json.loads((out / "manifest.json").read_text(), parse_constant=refuse)["parameters"]["grounding_weight"]


def test_a_bad_since_is_a_usage_error_not_a_traceback(story, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run_from_argv("--study", "golden", "--format", "dpo", "--out", str(tmp_path / "x"), "--since", "May")
    assert info.value.code == 2  # argparse's usage error
    err = capsys.readouterr().err
    assert "argument --since: 'May' is not a date (YYYY-MM-DD)" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_an_output_under_a_file_says_it_is_a_file(story, tmp_path):
    a_file = tmp_path / "afile"
    a_file.write_text("")
    with pytest.raises(ActionRefused, match="afile is a file, not a directory"):
        export(tmp_path, "afile/x", format="dpo")
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]


def test_sigterm_during_an_export_leaves_no_staging_directory(story, tmp_path, monkeypatch):
    # Stands in for the default action (which would kill the test run): a handler that lets the
    # export go on. The command must replace it for the export's duration, and put it back.
    terminated: list[int] = []

    def record(signum: int, frame: object) -> None:
        terminated.append(signum)

    previous = signal.signal(signal.SIGTERM, record)

    def terminated_midway(conv, sel):
        yield from formats.dpo_rows(conv, sel)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setitem(formats.BUILDERS, "dpo", terminated_midway)
    try:
        with pytest.raises(SystemExit) as info:
            call_command(
                "export_dataset", "--study", "golden", "--format", "dpo", "--out", str(tmp_path / "out"), "--quiet",
                "--processes", "1",
            )  # fmt: skip
        assert info.value.code == 128 + signal.SIGTERM
        assert terminated == []
        assert list(tmp_path.iterdir()) == []  # neither the output nor `.out.*.partial`
        assert signal.getsignal(signal.SIGTERM) is record  # put back
        os.kill(os.getpid(), signal.SIGTERM)
        assert terminated == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
