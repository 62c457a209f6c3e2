"""Writing an export: rows into a JSONL (optionally gzip) or Parquet file inside a staging
directory that only becomes the output directory, by one rename, once everything is written.

If anything fails, the staging directory is removed: no half-written export is ever left at
the output path.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq


class OutputError(Exception):
    """The output path cannot be used."""


def output_check(out: Path) -> None:
    """Refuse an output path that exists or whose parent is missing or not writable."""
    if out.exists() or out.is_symlink():
        raise OutputError(f"{out} already exists; choose a new path (exports never overwrite).")
    parent = out.parent
    if not parent.is_dir():
        raise OutputError(f"Cannot write to {out}: the directory {parent} does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"Cannot write to {out}: the directory {parent} is not writable.")


@contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A fresh directory next to `out`, renamed to `out` if the block succeeds, removed if not."""
    output_check(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)
        try:
            os.rename(staging, out)  # atomic; fails (instead of merging) if `out` appeared meanwhile
        except OSError as exc:
            raise OutputError(f"Cannot move the export into place at {out}: {exc.strerror}.") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def data_file_name(fmt: str, file_format: str, compress: bool, split: str | None = None) -> str:
    """`dpo.jsonl`; a split export's file per split is `dpo-train.jsonl`, `dpo-test.jsonl`, …"""
    stem = fmt if split is None else f"{fmt}-{split}"
    return f"{stem}.parquet" if file_format == "parquet" else f"{stem}.jsonl.gz" if compress else f"{stem}.jsonl"


def part_format(file_format: str) -> str:
    """What the parts of a split export are written as: plain JSONL for JSONL (gzip is applied
    when they are joined), an Arrow IPC stream of one batch per chunk for Parquet."""
    return "arrow" if file_format == "parquet" else "jsonl"


class _HashedFile:
    """A binary file that hashes what is written to it: the digest costs no second read."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "wb")  # noqa: SIM115 (closed in close())
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self._file.write(data)

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        self._file.flush()

    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        self._file.close()


class RowWriter:
    """Appends batches of rows to one data file: JSONL (optionally gzip), Parquet, or Arrow IPC
    (the parts of a split Parquet export)."""

    def __init__(self, path: Path, *, file_format: str, compress: bool, schema: pa.Schema) -> None:
        self.path = path
        self.rows = 0
        self._parquet: pq.ParquetWriter | None = None
        self._arrow: pa.ipc.RecordBatchStreamWriter | None = None
        self._raw = _HashedFile(path)
        self._out: Any = None
        self._schema = schema
        if file_format == "parquet":
            # No statistics or page index timestamps vary between runs: the file is reproducible.
            self._parquet = pq.ParquetWriter(self._raw, schema, compression="zstd")
        elif file_format == "arrow":
            self._arrow = pa.ipc.new_stream(self._raw, schema)
        else:
            # mtime=0 and no file name in the header keep gzip output byte-identical across runs.
            self._out = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0) if compress else self._raw

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self._parquet is not None:
            self._parquet.write_table(pa.Table.from_pylist(rows, schema=self._schema))
        elif self._arrow is not None:
            self._arrow.write_batch(pa.RecordBatch.from_pylist(rows, schema=self._schema))
        else:
            assert self._out is not None
            self._out.write(b"".join([orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE) for row in rows]))
        self.rows += len(rows)

    def write_part(self, path: Path, rows: int) -> None:
        """Append a part written by `RowWriter(path, file_format=part_format(...))`: the same
        batches as if its rows had been written here, so the file is the same as unsplit."""
        if self._parquet is not None:
            with pa.ipc.open_stream(path) as batches:
                for batch in batches:
                    self._parquet.write_table(pa.Table.from_batches([batch]))
        else:
            assert self._out is not None
            with open(path, "rb") as part:
                shutil.copyfileobj(part, self._out, 1 << 20)
        self.rows += rows

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._arrow is not None:
            self._arrow.close()
        if self._out is not None and self._out is not self._raw:
            self._out.close()
        self._raw.close()

    @property
    def sha256(self) -> str:
        """Of the file's bytes as written (read it once `close` has run)."""
        return self._raw.digest.hexdigest()
