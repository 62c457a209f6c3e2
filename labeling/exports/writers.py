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
from typing import IO, Any

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


def data_file_name(fmt: str, file_format: str, compress: bool) -> str:
    return f"{fmt}.parquet" if file_format == "parquet" else f"{fmt}.jsonl.gz" if compress else f"{fmt}.jsonl"


class RowWriter:
    """Appends batches of rows to one data file."""

    def __init__(self, path: Path, *, file_format: str, compress: bool, schema: pa.Schema) -> None:
        self.path = path
        self.rows = 0
        self._parquet: pq.ParquetWriter | None = None
        self._raw: IO[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._schema = schema
        if file_format == "parquet":
            # No statistics or page index timestamps vary between runs: the file is reproducible.
            self._parquet = pq.ParquetWriter(path, schema, compression="zstd")
        else:
            self._raw = open(path, "wb")  # noqa: SIM115 (closed in close())
            # mtime=0 and no file name in the header keep gzip output byte-identical across runs.
            self._out = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0) if compress else self._raw

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self._parquet is not None:
            self._parquet.write_table(pa.Table.from_pylist(rows, schema=self._schema))
        else:
            assert self._out is not None
            self._out.write(b"".join(orjson.dumps(row) + b"\n" for row in rows))
        self.rows += len(rows)

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._out is not None and self._out is not self._raw:
            self._out.close()
        if self._raw is not None:
            self._raw.close()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
