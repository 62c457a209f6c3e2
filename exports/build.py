"""`export_build`: one export, from parameters to a finished output directory."""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, Pipe, wait
from pathlib import Path
from typing import Any, NoReturn, cast

from django.conf import settings
from django.db import connections

from core.errors import ActionRefused
from exports import card, formats, writers
from exports.selection import ExportParams, Selection, Span, selection_open

# (conversations done, conversations selected, rows written)
Progress = Callable[[int, int, int], None]

logger = logging.getLogger(__name__)

MIN_CHUNKS = 16
MIN_CHUNK_CONVERSATIONS = 50


@dataclass(frozen=True)
class ExportResult:
    out: Path
    data_file: Path
    rows: int
    conversations: int
    sha256: str
    # Every data file: one, or one per split (`--split`), in the order the splits were given.
    data_files: tuple[Path, ...] = ()


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


# glibc's mallopt parameter for how much free memory at the top of the heap is kept, not trimmed.
_M_TRIM_THRESHOLD = -1
_TRIM_DEFAULT = 128 * 1024


@contextmanager
def _heap_kept() -> Iterator[None]:
    """Keep freed heap memory in the process while an export runs (glibc only; else a no-op).

    Every chunk frees its query results and rows (tens of MB) and allocates as much again.
    At glibc's default the freed top of the heap goes back to the kernel and the next chunk
    faults it in again, page by page: a third of an export's system time, 5–10 % of its wall
    time (docs/benchmarks.md). The peak is the same either way. Afterwards the threshold goes
    back to glibc's default value and the heap is trimmed once (glibc's automatic tuning of the
    threshold stays off in that process, as after any mallopt call).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        kept = libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    except (OSError, AttributeError):
        kept = False
    try:
        yield
    finally:
        if kept:
            libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_DEFAULT)
            libc.malloc_trim(0)


@_gc_relaxed()
@_heap_kept()
def export_build(
    *,
    params: ExportParams,
    out: Path,
    progress: Progress | None = None,
    chunk: int | None = None,
    processes: int | None = None,
) -> ExportResult:
    """Write `out/` (data file, README.md, manifest.json) or nothing at all.

    Conversations are read `chunk` at a time (default: `chunk_for`). With `params.split`, each
    conversation's rows go to the data file of its split (`Selection.split_for`).
    With `processes` > 1 (default: settings.EXPORT_PROCESSES) a selection of several chunks is
    split into runs of whole chunks written by that many processes at once, then joined in
    order: the same file as one process writes (see `export_parts`).

    Raises ActionRefused with a message for the user on bad parameters, an output path that
    exists or cannot be written, or a selection without rows.
    """
    sel = selection_open(params, refuse=_refuse)
    out = _output_checked(out)
    total = _selected_count(sel)
    chunk = chunk or chunk_for(total)
    processes = settings.EXPORT_PROCESSES if processes is None else processes
    spans = sel.spans(total=total, chunk=chunk, parts=processes) if processes > 1 and sel.concurrent_reads() else []
    counted = _Counted(total, progress)
    names = {
        split: writers.data_file_name(params.format, params.file_format, params.gzip, split if params.split else None)
        for split in sel.split_names()
    }
    try:
        with writers.staging_dir(out) as staging:
            outs: Outputs = {}
            try:
                for split, name in names.items():
                    outs[split] = writers.RowWriter(
                        staging / name,
                        file_format=params.file_format,
                        compress=params.gzip,
                        schema=formats.SCHEMAS[params.format],
                    )
                stats = _rows_written(sel, outs, spans, staging=staging, chunk=chunk, counted=counted)
            finally:
                for writer in outs.values():
                    writer.close()
            _rows_required(sel, outs, total=total)
            _card_written(sel, staging, outs=outs, stats=stats)
    except writers.OutputError as exc:
        raise _refuse(str(exc)) from exc
    except OSError as exc:
        raise _refuse(f"Writing the export to {out} failed: {exc.strerror or exc}.") from exc
    first = next(iter(outs.values()))
    return ExportResult(
        out=out,
        data_file=out / first.path.name,
        rows=sum(writer.rows for writer in outs.values()),
        conversations=total,
        sha256=first.sha256,
        data_files=tuple(out / writer.path.name for writer in outs.values()),
    )


def _output_checked(out: Path) -> Path:
    """The output path made absolute, refused before any reading if it exists or cannot be
    written: a mistake in it should not cost a whole export."""
    out = Path(out).expanduser().absolute()
    if out.parent.exists() and not out.parent.is_dir():  # else "does not exist", which sends one looking for it
        raise _refuse(f"Cannot write to {out}: {out.parent} is a file, not a directory.")
    try:
        writers.output_check(out)
    except writers.OutputError as exc:
        raise _refuse(str(exc)) from exc
    return out


class Terminated(SystemExit):
    """SIGTERM (or SIGHUP) arrived: leave as Ctrl-C does, through every `finally` and cleanup."""


@contextmanager
def termination_raises() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise `Terminated` instead of killing the process.

    Killed outright, an export would leave its hidden `.OUT.*.partial` staging directory behind;
    raised, the staging cleanup runs as for any failure (SIGINT raises KeyboardInterrupt already).
    For a process's main thread (the command line); a Celery worker handles its signals itself.
    """

    def raise_terminated(signum: int, frame: object) -> NoReturn:
        raise Terminated(128 + signum)

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    handled = (signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, raise_terminated) for signum in handled}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _selected_count(sel: Selection) -> int:
    """The number of conversations selected; none is refused, as there is nothing to export."""
    total = sel.count()
    if total == 0:
        raise _refuse(f"No conversations in study “{sel.study.slug}” match the filters: nothing to export.")
    return total


# split name → the writer of its data file ({"train": …} for an unsplit export)
Outputs = dict[str, writers.RowWriter]


def _rows_written(
    sel: Selection,
    outs: Outputs,
    spans: list[Span],
    *,
    staging: Path,
    chunk: int,
    counted: _Counted,
) -> card.SelectionStats:
    """The rows into `outs`, by several processes when the selection was split into spans,
    else by this one: either way the same files."""
    if len(spans) > 1:
        logger.info("Export of %s as %s: %d conversations in %d processes", sel.study.slug,
                    sel.params.format, counted.total, len(spans))  # fmt: skip
        return export_parts(sel, spans, outs=outs, staging=staging, chunk=chunk, report=counted.add)
    return export_rows(sel, outs, chunk=chunk, report=counted.add)


def _rows_required(sel: Selection, outs: Outputs, *, total: int) -> None:
    """Refuse an export without rows: an empty dataset is a mistake in the filters, not a result.
    So is an empty split: too few conversations for its share (or a seed that left it none)."""
    fmt = sel.params.format
    if sum(writer.rows for writer in outs.values()) == 0:
        raise _refuse(
            f"The {total} selected conversations give no `{fmt}` rows "
            "(no votes, or none that pass the filters): nothing to export."
        )
    empty = [split for split, writer in outs.items() if writer.rows == 0]
    if sel.params.split and empty:
        raise _refuse(
            f"The split {', '.join(empty)} gets no `{fmt}` rows from the {total} selected conversations: "
            "give it a larger share, or split a larger selection."
        )


def _card_written(sel: Selection, staging: Path, *, outs: Outputs, stats: card.SelectionStats) -> None:
    """manifest.json and README.md beside the finished data files, which they describe (name,
    split of a split export, rows, size and digest)."""
    files: list[dict[str, Any]] = []
    for split, writer in outs.items():
        name = writer.path.name
        declared = {"split": split} if sel.params.split else {}
        size = (staging / name).stat().st_size
        files.append({**declared, "path": name, "rows": writer.rows, "bytes": size, "sha256": writer.sha256})
    manifest = card.manifest_json(params=sel.params, files=files, stats=stats, quality=card.quality_manifest(sel))
    (staging / "manifest.json").write_text(manifest)
    (staging / "README.md").write_text(card.card_markdown(sel=sel, files=files, stats=stats))


def chunk_for(total: int) -> int:
    """Conversations per chunk: settings.EXPORT_CHUNK_CONVERSATIONS, but a small selection is
    cut into at least MIN_CHUNKS chunks (of 50 or more), so that the runs of whole chunks a
    split export gives its processes come out even. It depends on the selection only, never on
    the number of processes: the file (Parquet row groups are chunks) stays the same."""
    return min(settings.EXPORT_CHUNK_CONVERSATIONS, max(MIN_CHUNK_CONVERSATIONS, -(-total // MIN_CHUNKS)))


class _Counted:
    """Conversations and rows done so far, passed on to the caller's `Progress`."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total, self.progress = total, progress
        self.conversations = self.rows = 0

    def add(self, conversations: int, rows: int) -> None:
        self.conversations += conversations
        self.rows += rows
        if self.progress is not None:
            self.progress(self.conversations, self.total, self.rows)


def export_rows(
    sel: Selection, outs: Outputs, *, chunk: int, report: Callable[[int, int], None]
) -> card.SelectionStats:
    """Write the rows of the selection (or of its span), chunk by chunk, each conversation's to
    its split's writer; `report(conversations, rows)` after each. Returns the figures for the
    dataset card."""
    build = formats.BUILDERS[sel.params.format]
    split_for = sel.split_for()
    stats = card.SelectionStats()
    with closing(sel.chunks(size=chunk)) as chunks:  # stops a read-ahead thread on failure
        for conversations in chunks:
            rows: dict[str, list[dict[str, Any]]] = {split: [] for split in outs}
            for conv in conversations:
                built = list(build(conv, sel))
                stats.observe(conv, sel, built)  # the card counts what the rows hold, filters and all
                rows[split_for(conv.id)].extend(built)
            for split, writer in outs.items():
                writer.write(rows[split])
            report(len(conversations), sum(len(split_rows) for split_rows in rows.values()))
    return stats


class ExportPartFailed(Exception):
    """A process writing part of an export failed; the message says how."""


def export_parts(
    sel: Selection,
    spans: list[Span],
    *,
    outs: Outputs,
    staging: Path,
    chunk: int,
    report: Callable[[int, int], None],
) -> card.SelectionStats:
    """Write each span in a process of its own, then append the parts to `outs` in order.

    Rows depend only on their conversation, and each span is a run of the same chunks one
    process would read, so the joined file is byte for byte the one process's file.

    The parts are plain `os.fork` children: they start at once with the selection already
    open, and unlike `multiprocessing` they may be started from a Celery worker's pool process
    (which `multiprocessing` refuses as daemonic). The database connections are closed first:
    a child must not share its parent's. Each part reports progress and its card figures
    through a pipe; the first failure kills the others, and every child is waited for.
    """
    part_format = writers.part_format(sel.params.file_format)
    connections.close_all()
    parts: list[_Part] = []
    try:
        for index, span in enumerate(spans):
            parts.append(
                _part_start(sel, span, index, splits=list(outs), staging=staging, part_format=part_format, chunk=chunk)
            )
        _parts_awaited(parts, report)
    finally:
        _parts_reaped(parts)
    return _parts_joined(parts, outs)


def _part_start(
    sel: Selection, span: Span, index: int, *, splits: list[str], staging: Path, part_format: str, chunk: int
) -> _Part:
    """Fork the process that writes one span to its own part file (one per split); this process
    keeps the reading end of the pipe the part reports through."""
    messages, sender = Pipe(duplex=False)
    paths = {split: staging / (f".part-{index}-{split}" if sel.params.split else f".part-{index}") for split in splits}
    pid = os.fork()
    if pid == 0:  # the part's process: never returns
        messages.close()
        _part_main(replace(sel, span=span), paths, part_format, chunk, sender)
    sender.close()
    return _Part(index, pid, messages, paths)


def _parts_awaited(parts: list[_Part], report: Callable[[int, int], None]) -> None:
    """Pass the parts' progress on until every one has finished; raise at the first refusal,
    failure or part that ends without finishing (the caller then stops the others)."""
    pending = {part.messages: part for part in parts}
    while pending:
        for waited in wait(list(pending)):
            ready = cast(Connection, waited)  # `wait` returns what it was given: our pipes
            part = pending[ready]
            try:
                kind, first, second = ready.recv()
            except EOFError:  # the process has ended: after "done", or it died
                del pending[ready]
                if part.result is None:
                    raise ExportPartFailed(f"{part.name} ended without finishing its part.") from None
                continue
            if kind == "progress":
                report(first, second)
            elif kind == "done":
                part.result = (first, second)
            elif kind == "refused":
                raise _refuse(first)
            else:
                raise ExportPartFailed(f"{part.name} failed: {first}")


def _parts_reaped(parts: list[_Part]) -> None:
    """Kill the parts that have not finished and wait for every one, whatever happened: no
    process is left running or unreaped, and no pipe open."""
    for part in parts:
        if part.result is None:
            with suppress(ProcessLookupError):
                os.kill(part.pid, signal.SIGKILL)
        os.waitpid(part.pid, 0)
        part.messages.close()


def _parts_joined(parts: list[_Part], outs: Outputs) -> card.SelectionStats:
    """Append the finished parts to `outs` in span order (which makes each file the one a
    single process writes) and add up their card figures; each part file goes once copied."""
    stats = card.SelectionStats()
    for part in parts:
        assert part.result is not None
        rows, part_stats = part.result
        for split, writer in outs.items():
            writer.write_part(part.paths[split], rows[split])
            part.paths[split].unlink()
        stats.merge(part_stats)
    return stats


@dataclass
class _Part:
    index: int
    pid: int
    messages: Connection  # what the part sends: ("progress" | "done" | "refused" | "failed", …)
    paths: dict[str, Path]  # split → the part's file of it
    result: tuple[dict[str, int], card.SelectionStats] | None = None  # (rows per split, figures) once done

    @property
    def name(self) -> str:
        return f"export-part-{self.index}"


def _part_main(sel: Selection, paths: dict[str, Path], part_format: str, chunk: int, messages: Connection) -> NoReturn:
    """One part, in its forked process: its rows to `paths` (by split), everything else through
    `messages`. Leaves by `os._exit`, so nothing of the parent (atexit hooks, buffers) runs twice."""
    status = 1
    try:
        outs: Outputs = {}
        try:
            for split, path in paths.items():
                outs[split] = writers.RowWriter(
                    path, file_format=part_format, compress=False, schema=formats.SCHEMAS[sel.params.format]
                )
            stats = export_rows(sel, outs, chunk=chunk, report=lambda c, r: messages.send(("progress", c, r)))
        finally:
            for part in outs.values():
                part.close()
        messages.send(("done", {split: part.rows for split, part in outs.items()}, stats))
        status = 0
    except ActionRefused as exc:
        messages.send(("refused", exc.message, None))
    except BaseException as exc:  # noqa: BLE001 (reported to the parent, which raises)
        messages.send(("failed", "".join(traceback.format_exception_only(exc)).strip(), None))
    finally:
        connections.close_all()
        messages.close()
        os._exit(status)
