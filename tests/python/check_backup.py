"""Independent readers of eddy's Parquet backup and raw archive.

Reads OUT/backup and OUT/raw the way the docs' recipes do (DuckDB and
pyarrow, trusting the manifest, not the directory listing) and prints one
JSON object with what the Rust test compares against its input:

    python check_backup.py OUT
"""
import glob
import json
import os
import sys

import duckdb
import pyarrow.dataset as ds


def committed(root):
    files = []
    for entry in sorted(glob.glob(os.path.join(root, "_manifest", "*.json"))):
        with open(entry) as f:
            m = json.load(f)
        assert m["version"] == 1, m
        files += [os.path.join(root, f["path"]) for f in m["files"]]
    return files


def main(out):
    backup = committed(os.path.join(out, "backup"))
    raw = committed(os.path.join(out, "raw"))
    con = duckdb.connect()
    rel = f"read_parquet({backup!r}, union_by_name=true, hive_partitioning=true)"
    rows_per_date = dict(
        con.execute(f"select cast(date as varchar), count(*) from {rel} group by 1").fetchall()
    )
    channels = [
        r[0][4:]
        for r in con.execute(f"describe select * from {rel}").fetchall()
        if r[0].startswith("raw_")
    ]
    sums = {}
    for c in channels:
        for dev, s, n in con.execute(
            f'select device_id, sum("raw_{c}"), count("raw_{c}") from {rel} group by 1'
        ).fetchall():
            if n:
                sums[f"{dev}/{c}"] = [s, n]
    dup = con.execute(
        f"select count(*) - count(distinct (src_partition, src_offset)) from {rel}"
    ).fetchone()[0]
    schema = {r[0]: r[1] for r in con.execute(f"describe select * from {rel}").fetchall()}
    late = con.execute(f"select count(*) from {rel} where late").fetchone()[0]

    # pyarrow, independently: a dataset over the committed files with a unified schema.
    schemas = [ds.dataset(f, format="parquet").schema for f in backup]
    import pyarrow as pa

    unified = pa.unify_schemas(schemas) if schemas else pa.schema([])
    table = ds.dataset(backup, schema=unified, format="parquet").to_table() if backup else None
    arrow_rows = table.num_rows if table is not None else 0
    arrow_types = {f.name: str(f.type) for f in unified}

    raw_rows = []
    if raw:
        t = ds.dataset(raw, format="parquet").to_table(columns=["src_offset", "bytes"])
        raw_rows = sorted(zip(t.column("src_offset").to_pylist(), t.column("bytes").to_pylist()))
    print(
        json.dumps(
            {
                "files": len(backup),
                "rows_per_date": rows_per_date,
                "sums": sums,
                "duplicates": dup,
                "late": late,
                "duckdb_schema": schema,
                "arrow_rows": arrow_rows,
                "arrow_types": arrow_types,
                "raw": [[o, b.decode("utf-8", "replace")] for o, b in raw_rows],
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
