"""Dataset exports: one study (filtered) → one data file, a dataset card and a manifest.

`selection` reads the study a chunk of conversations at a time, `formats` turns each
conversation into rows, `writers` writes them (JSONL, gzip, Parquet) into a temporary directory
that is renamed into place only when complete, `card` writes README.md and manifest.json, and
`build.export_build` ties them together. Everything is ordered by primary keys and written
without wall-clock times, so the same data and parameters give byte-identical files.
`services` queues and runs the exports requested in admin; `tasks` is their Celery task.
"""
