"""`export_build`: one export, from parameters to a finished output directory."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from annotate.services import ActionRefused
from labeling.exports import card, formats, writers
from labeling.exports.selection import ExportParams, selection_open

# (conversations done, conversations selected, rows written)
Progress = Callable[[int, int, int], None]

CHUNK_CONVERSATIONS = 400


@dataclass(frozen=True)
class ExportResult:
    out: Path
    data_file: Path
    rows: int
    conversations: int
    sha256: str


def _refuse(message: str) -> ActionRefused:
    return ActionRefused(message, status=400)


@contextmanager
def _gc_relaxed() -> Iterator[None]:
    """Run the cyclic garbage collector less often while an export runs.

    An export allocates millions of short-lived containers (loaded turns, rows, messages) that
    reference counting frees. At the default thresholds the collector still runs every 700
    allocations and regularly walks every object the process holds (Django, pyarrow): a quarter
    to a third of an export's CPU time (docs/benchmarks.md). Exports make no reference cycles,
    so rarer passes cost no memory (peak RSS measured flat up to a million comparisons).
    """
    old = gc.get_threshold()
    if old[0]:  # 0: collection is off already
        gc.set_threshold(max(old[0], 50_000), max(old[1], 20), max(old[2], 100))
    try:
        yield
    finally:
        gc.set_threshold(*old)


@_gc_relaxed()
def export_build(
    *, params: ExportParams, out: Path, progress: Progress | None = None, chunk: int = CHUNK_CONVERSATIONS
) -> ExportResult:
    """Write `out/` (data file, README.md, manifest.json) or nothing at all.

    Raises ActionRefused with a message for the user on bad parameters, an output path that
    exists or cannot be written, or a selection without rows.
    """
    sel = selection_open(params, refuse=_refuse)
    out = Path(out).expanduser().absolute()
    try:
        writers.output_check(out)
    except writers.OutputError as exc:
        raise _refuse(str(exc)) from exc
    total = sel.count()
    if total == 0:
        raise _refuse(f"No conversations in study “{sel.study.slug}” match the filters: nothing to export.")
    build = formats.BUILDERS[params.format]
    stats = card.SelectionStats()
    name = writers.data_file_name(params.format, params.file_format, params.gzip)
    try:
        with writers.staging_dir(out) as staging:
            writer = writers.RowWriter(
                staging / name,
                file_format=params.file_format,
                compress=params.gzip,
                schema=formats.SCHEMAS[params.format],
            )
            try:
                done = 0
                for conversations in sel.chunks(size=chunk):
                    rows = []
                    for conv in conversations:
                        stats.observe(conv)
                        rows.extend(build(conv, sel))
                    writer.write(rows)
                    done += len(conversations)
                    if progress is not None:
                        progress(done, total, writer.rows)
            finally:
                writer.close()
            if writer.rows == 0:
                raise _refuse(
                    f"The {total} selected conversations give no `{params.format}` rows "
                    "(no votes, or none that pass the filters): nothing to export."
                )
            digest = writers.file_sha256(staging / name)
            files = [{"path": name, "rows": writer.rows, "bytes": (staging / name).stat().st_size, "sha256": digest}]
            (staging / "manifest.json").write_text(card.manifest_json(params=params, files=files, stats=stats))
            (staging / "README.md").write_text(card.card_markdown(sel=sel, files=files, stats=stats))
    except writers.OutputError as exc:
        raise _refuse(str(exc)) from exc
    except OSError as exc:
        raise _refuse(f"Writing the export to {out} failed: {exc.strerror or exc}.") from exc
    return ExportResult(out=out, data_file=out / name, rows=writer.rows, conversations=total, sha256=digest)
