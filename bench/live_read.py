"""Reading a live trials.parquet: how often each reader fails while the file is replaced.

A thread replaces the file the way a sweep does (Storage.write_table: a hidden temporary file
renamed over it), every --pace seconds (0: without pause). Each reader reads it for --seconds;
the failed reads are counted. A reader given a path can take the footer of one version and
the pages of the next; one read through one open file cannot. No Ray.

    .venv/bin/python bench/live_read.py [--pace 0] [--seconds 5]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time

import common  # noqa: F401 - puts the repository on the path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pace", type=float, default=0.0, help="seconds between rewrites (0: none)")
    ap.add_argument("--seconds", type=float, default=5.0, help="reading time per reader")
    args = ap.parse_args()

    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tunesmith.cluster.storage import Storage

    root = tempfile.mkdtemp(prefix="tunesmith-bench-")
    store = Storage(root)
    path = os.path.join(root, "trials.parquet")
    versions = [pa.table({"trial_id": [f"t{j}" for j in range(n)], "best_val_acc": [0.5] * n}) for n in (40, 97)]
    store.write_table("trials.parquet", versions[0])
    done = threading.Event()

    def rewrite():
        i = 0
        while not done.is_set():
            i += 1
            store.write_table("trials.parquet", versions[i % 2])
            if args.pace:
                done.wait(args.pace)

    con = duckdb.connect()

    def one_file():
        with open(path, "rb") as f:
            return pd.read_parquet(f)
    readers = {
        "pq.read_table(path)": lambda: pq.read_table(path),
        "pandas, by path": lambda: pd.read_parquet(path),
        "polars, by path": lambda: pl.read_parquet(path),
        "DuckDB, by path": lambda: con.sql(f"select * from '{path}'").fetchall(),
        "Storage.read_table": lambda: store.read_table("trials.parquet"),
        "pandas, one open file": one_file,
    }
    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        pace = f"every {args.pace:g} s" if args.pace else "without pause"
        print(f"trials.parquet replaced {pace}; {args.seconds:g} s of reads per reader")
        for name, read in readers.items():
            reads = failed = 0
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                reads += 1
                try:
                    read()
                except Exception:   # noqa: BLE001 - every failure counts, whatever the reader raises
                    failed += 1
            print(f"  {name:24s} {failed:6d} of {reads:6d} reads failed ({1000 * failed / reads:.1f} per 1000)")
    finally:
        done.set()
        writer.join()
        shutil.rmtree(root, True)


if __name__ == "__main__":
    main()
