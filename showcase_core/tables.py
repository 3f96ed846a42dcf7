"""Delta Lake tables under ROOT (delta-rs): write data files anywhere, commit them once from one place, read any version.

Workers (Ray tasks and actors) write Parquet data files with ``write_file`` and hand back the file's add record (a
plain dict: path, size, partition values, column statistics); the driver commits the records of a run in one Delta
transaction with ``commit``. A commit names an application transaction (``app_id``, ``app_version``): a second
commit of the same pair is a no-op, and two writers racing on one app id serialise on it (delta-rs's conflict
checker fails the later one); ``commit`` tells the caller which run won.

Tables use the plain reader/writer protocol (1, 2): no deletion vectors, column mapping or other table features, so
Spark, Trino, Athena, DuckDB and Polars read them. On S3 commits use conditional put (``conditional_put=etag``),
which SeaweedFS and AWS S3 honour; credentials, region and endpoint come from the environment only.

Nothing here imports Ray; ``deltalake`` is imported lazily.
"""

from __future__ import annotations

import io
import json
import math
import os
import posixpath
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from .store import Store, StoreError, retrying, uri_path, write_bytes_atomic

DELTA_LOG = "_delta_log"
# commits that change no data: a reader pinned to an older version may follow them to the newest one
MAINTENANCE = {"OPTIMIZE", "VACUUM START", "VACUUM END", "CHECKPOINT"}
META = "showcase."  # prefix of our keys in each commit's metadata


class LostRace(StoreError):
    """Another run committed the same application transaction first (exit 3: nothing of this run is visible)."""

    def __init__(self, app_id: str, winner: str):
        super().__init__(f"run {winner} committed {app_id} first; nothing of this run is visible")
        self.app_id, self.winner = app_id, winner


@dataclass(frozen=True)
class Committed:
    version: int  # the table version holding the commit
    run_id: str  # the run that made it
    new: bool  # False: it was already committed (a rerun, a resumed run or a retried commit)


def storage_options(root: str) -> dict | None:
    """delta-rs storage options for ROOT: on S3, endpoint/region from the environment, conditional-put commits and
    bounded retries (a short S3 outage is retried, not fatal). Credentials stay in the environment."""
    if uri_path(root)[0] != "s3":
        return None
    # object_store's default backoff (0.1 s, decorrelated jitter) spends its 10 retries in ~3 s of a restarting
    # server; from 1 s up to 15 s a try, 20 tries span ~75 s (measured against a stopped SeaweedFS)
    options = {"max_retries": "20", "retry_timeout": "180s", "backoff_config.init_backoff": "1s",
               "backoff_config.max_backoff": "15s", "backoff_config.base": "2",
               "AWS_REGION": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    if os.environ.get("AWS_S3_LOCKING_PROVIDER"):  # a store without conditional put: delta-rs's DynamoDB lock
        options.update({k: os.environ[k] for k in ("AWS_S3_LOCKING_PROVIDER", "DELTA_DYNAMO_TABLE_NAME")
                        if os.environ.get(k)})
    else:
        options["conditional_put"] = "etag"
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        options["AWS_ALLOW_HTTP"] = str(endpoint.startswith("http://")).lower()
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if os.environ.get(key):
            options[key] = os.environ[key]
    return options


def exists(store: Store, rel: str) -> bool:
    return store.exists(posixpath.join(rel, DELTA_LOG))


def open_table(store: Store, rel: str, version: int | None = None):
    """The Delta table at ``rel`` under ROOT (its newest version, or ``version``); StoreError when there is none."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    if not exists(store, rel):
        raise StoreError(f"no table at {store.uri(rel)}")
    try:
        return DeltaTable(store.uri(rel), version=version, storage_options=storage_options(store.root))
    except TableNotFoundError:
        raise StoreError(f"no table at {store.uri(rel)}") from None
    except DeltaError as e:
        raise StoreError(f"table {store.uri(rel)} version {version}: {str(e).splitlines()[0][:300]}") from None


# -- writing data files (workers) -----------------------------------------------------------------------------------
def column_stats(metadata: pq.FileMetaData, schema: pa.Schema) -> str:
    """Delta's per-file statistics (numRecords, min/max/nullCount of top-level primitive columns) from the Parquet
    footer, so engines can skip files."""
    stats = {"numRecords": metadata.num_rows, "minValues": {}, "maxValues": {}, "nullCount": {}}
    names = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
    for index, path in enumerate(names):
        if "." in path or path not in schema.names:
            continue  # nested (lists, structs): no statistics
        field = schema.field(path)
        if not (pa.types.is_string(field.type) or pa.types.is_integer(field.type) or pa.types.is_floating(field.type)
                or pa.types.is_boolean(field.type)):
            continue
        nulls, low, high, complete = 0, None, None, True
        for g in range(metadata.num_row_groups):
            s = metadata.row_group(g).column(index).statistics
            if s is None:
                complete = False
                break
            nulls += s.null_count or 0
            if s.has_min_max:
                low = s.min if low is None else min(low, s.min)
                high = s.max if high is None else max(high, s.max)
        if not complete:
            continue
        stats["nullCount"][path] = nulls
        if low is not None and not pa.types.is_boolean(field.type):
            if isinstance(low, float) and (math.isnan(low) or math.isnan(high)):
                continue
            stats["minValues"][path], stats["maxValues"][path] = low, high
    return json.dumps(stats)


def _file_path(name: str, partition: dict[str, str]) -> str:
    return posixpath.join(*(f"{k}={v}" for k, v in partition.items()), name) if partition else name


def _record(inside: str, size: int, metadata: pq.FileMetaData, partition: dict[str, str]) -> dict:
    return {"path": inside, "size": size, "rows": metadata.num_rows, "partition": json.dumps(partition),
            "stats": column_stats(metadata, metadata.schema.to_arrow_schema()), "modified_ms": int(time.time() * 1000)}


def write_file(store: Store, rel: str, table: pa.Table, name: str, partition: dict[str, str] | None = None,
               row_group_size: int | None = None) -> dict:
    """Write one data file of the table at ``rel`` (atomically: a retried writer replaces it whole) and return its
    add record for ``commit``. Partition columns are not stored in the file (Hive style, as Delta expects)."""
    partition = dict(partition or {})
    data = table.drop_columns([c for c in partition if c in table.column_names])
    buf = io.BytesIO()
    pq.write_table(data, buf, compression="zstd", row_group_size=row_group_size)
    inside = _file_path(name, partition)
    write_bytes_atomic(store.fs, store.path(rel, inside), buf.getvalue())
    return _record(inside, buf.tell(), pq.read_metadata(pa.BufferReader(buf.getvalue())), partition)


def file_record(store: Store, rel: str, name: str, partition: dict[str, str] | None = None) -> dict:
    """The add record of a data file written earlier (a killed run's, to resume), from its footer."""
    partition = dict(partition or {})
    path = store.path(rel, _file_path(name, partition))
    return _record(_file_path(name, partition), store.fs.get_file_info(path).size,
                   pq.read_metadata(path, filesystem=store.fs), partition)


RECORD_KEYS = ("path", "size", "rows", "partition", "stats", "modified_ms")


def record_columns(records: list[dict], **extra) -> dict:
    """Add records (plus ``extra`` equal-length columns) as numpy columns: how Ray Data hands them to the driver."""
    import numpy as np

    columns = {key: np.array([r[key] for r in records], dtype=np.int64 if key in ("size", "rows", "modified_ms")
                             else object) for key in RECORD_KEYS}
    return {**columns, **{k: np.asarray(v) for k, v in extra.items()}}


def _add_action(record: dict):
    from deltalake.transaction import AddAction

    return AddAction(record["path"], int(record["size"]), json.loads(record["partition"]), int(record["modified_ms"]),
                     True, record["stats"])


# -- committing (the driver) ----------------------------------------------------------------------------------------
def committed_by(store: Store, rel: str, app_id: str, app_version: int) -> str | None:
    """The run id of the commit that recorded (app_id, app_version), or None when nobody has."""
    if not exists(store, rel):
        return None
    table = open_table(store, rel)
    if (table.transaction_version(app_id) or 0) < app_version:
        return None
    for entry in table.history():
        if entry.get(META + "app_id") == app_id and int(entry.get(META + "app_version", -1)) == app_version:
            return entry.get(META + "run_id", "?")
    return "?"  # recorded by a writer that is not ours


def commit(store: Store, rel: str, files: list[dict], schema: pa.Schema | None, *, run_id: str, stage: str,
           app_id: str | None = None, app_version: int = 1, partition_by: list[str] | None = None,
           replace: dict[str, str] | None = None, overwrite: bool = False, reads: dict | None = None,
           metadata: dict | None = None) -> Committed:
    """Commit data files written by ``write_file`` to the table at ``rel`` in one transaction (the table is created
    empty first when absent, as version 0).

    ``replace`` (partition values) replaces exactly that partition; ``overwrite`` the whole table; else append.
    With ``app_id`` the commit is exactly once: if (app_id, app_version) is already recorded, by this run it is a
    no-op and by another it raises ``LostRace``; a concurrent commit of the same app id fails one of the two.
    ``reads`` (table -> version) and ``metadata`` land in the commit's metadata with the run id (lineage).
    ``schema`` None takes the first file's schema.

    A commit with ``app_id`` that fails on the network (an OSError: a connection reset as S3 comes back, which
    delta-rs's own retries do not repeat for a conditional PUT) is tried again (``store.retrying``):
    the app id makes that safe, since a commit that landed though its call failed is then found and is a no-op.
    """
    def commit_once() -> Committed:
        return _commit_once(store, rel, files, schema, run_id=run_id, stage=stage, app_id=app_id,
                            app_version=app_version, partition_by=partition_by, replace=replace, overwrite=overwrite,
                            reads=reads, metadata=metadata)

    return retrying(commit_once) if app_id else commit_once()


def _commit_once(store: Store, rel: str, files: list[dict], schema: pa.Schema | None, *, run_id: str, stage: str,
                 app_id: str | None, app_version: int, partition_by: list[str] | None, replace: dict[str, str] | None,
                 overwrite: bool, reads: dict | None, metadata: dict | None) -> Committed:
    from deltalake import CommitProperties, DeltaTable, Schema, Transaction
    from deltalake.exceptions import CommitFailedError

    # The snapshot that checks the app id is the one the commit is made from: a commit of the same app id after it
    # is then a conflict that delta-rs's checker fails (checking on an older snapshot would let two runs win).
    table = open_table(store, rel) if exists(store, rel) else None
    done = _already(store, rel, table, app_id, app_version, run_id)
    if done:
        return done
    missing = [f["path"] for f in files if not store.exists(posixpath.join(rel, f["path"]))]
    if missing:
        raise StoreError(f"{len(missing)} data files of {store.uri(rel)} are gone before their commit "
                         f"(e.g. {missing[0]}; removed by vacuum?): rerun with a new run id")
    if schema is None:
        schema = pq.read_schema(store.path(rel, files[0]["path"]), filesystem=store.fs)
    custom = {META + "run_id": run_id, META + "stage": stage, META + "reads": json.dumps(reads or {}, sort_keys=True),
              **{META + k: str(v) for k, v in (metadata or {}).items()}}
    transactions = None
    if app_id:
        custom.update({META + "app_id": app_id, META + "app_version": str(app_version)})
        transactions = [Transaction(app_id, app_version)]
    properties = CommitProperties(custom_metadata=custom, app_transactions=transactions)
    actions = [_add_action(f) for f in files]
    options = storage_options(store.root)
    try:
        if table is None:  # create it empty (version 0), then commit like every other writer
            try:
                DeltaTable.create(store.uri(rel), Schema.from_arrow(schema), mode="ignore",
                                  partition_by=partition_by, storage_options=options,
                                  commit_properties=CommitProperties(custom_metadata={META + "run_id": run_id,
                                                                                      META + "stage": stage}))
            except Exception:  # another writer created it at the same time
                if not exists(store, rel):
                    raise
            table = open_table(store, rel)
            done = _already(store, rel, table, app_id, app_version, run_id)
            if done:
                return done
        mode = "overwrite" if overwrite or replace else "append"
        filters = [(k, "=", v) for k, v in replace.items()] if replace else None
        table.create_write_transaction(actions, mode, schema, partition_by=partition_by, partition_filters=filters,
                                       commit_properties=properties)
    except CommitFailedError:
        # lost to a concurrent commit of the same app id (LostRace), or our own commit landed though the call failed
        done = app_id and _already(store, rel, open_table(store, rel), app_id, app_version, run_id)
        if done:
            return done
        raise
    return Committed(open_table(store, rel).version(), run_id, True)


def _already(store: Store, rel: str, table, app_id: str | None, app_version: int, run_id: str) -> Committed | None:
    """None when (app_id, app_version) is not recorded in ``table``'s snapshot; a no-op result when this run
    recorded it; LostRace when another run did."""
    if not app_id or table is None or (table.transaction_version(app_id) or 0) < app_version:
        return None
    winner = committed_by(store, rel, app_id, app_version)
    if winner != run_id:
        raise LostRace(app_id, winner or "?")
    return Committed(table.version(), run_id, False)


class IncrementalCommit:
    """Commit a long job's data files as they arrive: every ``every_files`` files or ``every_s`` seconds, each batch
    exactly once (app id ``app_id``, versions 1, 2, ...), so progress is visible and a resumed run never doubles rows.
    Memory: the add records of one batch."""

    def __init__(self, store: Store, rel: str, *, run_id: str, stage: str, app_id: str, every_files: int = 64,
                 every_s: float = 60.0, reads: dict | None = None):
        self.store, self.rel, self.run_id, self.stage, self.app_id = store, rel, run_id, stage, app_id
        self.every_files, self.every_s, self.reads = every_files, every_s, reads
        self.pending: dict[str, dict] = {}  # path -> record: a file received twice is committed once
        self.commits, self.rows, self.last = 0, 0, time.monotonic()

    def add(self, record: dict) -> None:
        self.pending[record["path"]] = record
        if len(self.pending) >= self.every_files or time.monotonic() - self.last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.pending:
            return
        files = list(self.pending.values())
        commit(self.store, self.rel, files, None, run_id=self.run_id, stage=self.stage, app_id=self.app_id,
               app_version=self.commits + 1, reads=self.reads)
        self.commits += 1
        self.rows += sum(int(f["rows"]) for f in files)
        self.pending = {}


# -- reading -------------------------------------------------------------------------------------------------------
def current_version(store: Store, rel: str, pinned: int | None) -> int:
    """``pinned``, or the newest version when every commit after it only maintains files (optimize, vacuum): the
    data is the same and the pinned version's files may be gone after a vacuum."""
    table = open_table(store, rel)
    newest = table.version()
    if pinned is None or pinned >= newest:
        return newest
    later = [h for h in table.history(newest - pinned) if int(h.get("version", -1)) > pinned]
    if len(later) == newest - pinned and all(h.get("operation") in MAINTENANCE for h in later):
        return newest
    return pinned


def read(store: Store, rel: str, version: int | None = None, columns: list[str] | None = None,
         filters: list | None = None) -> pa.Table:
    """A whole version of a table (default: the newest) as Arrow: use for small tables and slices by partition."""
    table = open_table(store, rel, version)
    return table.to_pyarrow_table(columns=columns, filters=filters, filesystem=table_files(store, rel))


def dataset(store: Store, rel: str, version: int | None = None):
    """A version of a table as a pyarrow dataset (nothing read yet)."""
    return open_table(store, rel, version).to_pyarrow_dataset(filesystem=table_files(store, rel))


def table_files(store: Store, rel: str):
    """The table's folder on the store's own pyarrow filesystem, for deltalake's pyarrow datasets to read through.
    deltalake's default (a Python filesystem over its Rust object store) leaves threads that abort the process at
    exit ("terminate called without an active exception", about one exit in two here; delta-rs issue 2184)."""
    import pyarrow.fs as pafs

    return pafs.SubTreeFileSystem(store.path(rel), store.fs)


def iter_batches(store: Store, rel: str, version: int | None = None, columns: list[str] | None = None,
                 batch_size: int = 65536, filter=None, files_ahead: int = 4):
    """Stream a version of a table batch by batch; ``filter`` a pyarrow dataset expression. Memory: the row groups of
    ``files_ahead`` data files read ahead (pyarrow's default of 4 hides S3's latency on tables of many small files;
    1 held 150 to 300 MiB less over the texts of a 1 GB Gest file's reviews, at the same speed on local disk)."""
    yield from dataset(store, rel, version).to_batches(columns=columns, batch_size=batch_size, filter=filter,
                                                       fragment_readahead=files_ahead)


def file_uris(store: Store, rel: str, version: int | None = None) -> list[str]:
    """The data files of a version, as URIs another process (Ray Data) can open."""
    return sorted(open_table(store, rel, version).file_uris())


def data_files(store: Store, rel: str, version: int | None = None) -> list[tuple[str, int]]:
    """(path relative to ROOT, bytes) of each data file of a version of an unpartitioned table, in path order (a
    reader of the files alone would miss a partitioned table's partition columns: ValueError)."""
    from urllib.parse import unquote

    table = open_table(store, rel, version)
    if table.metadata().partition_columns:
        raise ValueError(f"{rel} is partitioned by {table.metadata().partition_columns}: read it with read or dataset")
    actions = pa.table(table.get_add_actions(flatten=True))  # arro3 -> pyarrow
    if not actions.num_rows:
        return []
    return sorted((posixpath.join(rel, unquote(path)), int(size))
                  for path, size in zip(actions.column("path").to_pylist(), actions.column("size_bytes").to_pylist()))


def rows(store: Store, rel: str, version: int | None = None) -> int:
    import pyarrow.compute as pc

    actions = pa.table(open_table(store, rel, version).get_add_actions(flatten=True))  # arro3 -> pyarrow
    return int(pc.sum(actions.column("num_records")).as_py() or 0) if actions.num_rows else 0


# -- maintenance ---------------------------------------------------------------------------------------------------
def _folders(store: Store, rel: str) -> list[str]:
    """The folders directly under ``rel`` (relative to ROOT; "" for ROOT itself)."""
    import pyarrow.fs as pafs

    if rel and not store.exists(rel):
        return []
    infos = store.fs.get_file_info(pafs.FileSelector(store.path(rel) if rel else store.base))
    return [posixpath.join(rel, posixpath.basename(i.path)) if rel else posixpath.basename(i.path)
            for i in infos if i.type == pafs.FileType.Directory]


def _project_places(store: Store) -> list[str]:
    """The folders under ROOT's own namespaces: tables/*, and embeddings/ and features/ two levels down
    (``<encoder_id>/<kind>``). Lists folders only, never data files."""
    places = _folders(store, "tables")
    for group in ("embeddings", "features"):
        places += [kind for encoder in _folders(store, group) for kind in _folders(store, encoder)]
    return places


def find_tables(store: Store) -> list[str]:
    """Every Delta table under ROOT (paths relative to ROOT): at the top, under tables/, embeddings/ and features/."""
    return sorted(p for p in _folders(store, "") + _project_places(store) if exists(store, p))


def _uncommitted_files(store: Store, rel: str) -> list:
    """The data files (``part-*.parquet``) directly in ``rel`` or in its partition folders (``key=value``), as
    pyarrow FileInfos."""
    import pyarrow.fs as pafs

    def files(path: str) -> list:
        return store.fs.get_file_info(pafs.FileSelector(path))

    infos = files(store.path(rel))
    infos += [f for d in infos if d.type == pafs.FileType.Directory and "=" in posixpath.basename(d.path)
              for f in files(d.path)]
    return [i for i in infos if i.type == pafs.FileType.File and posixpath.basename(i.path).startswith("part-")
            and i.path.endswith(".parquet")]


def find_uncommitted_tables(store: Store, top_level: tuple[str, ...]) -> list[str]:
    """Table folders whose first commit never came (a first run killed before it, never resumed): the folders named
    ``top_level`` and those under ROOT's own namespaces (``_project_places``; staging ``_*`` left out), without a
    Delta log, with ``part-*.parquet`` data files directly or in partition folders. Anything else at the top of ROOT
    (models, reports, a user's candidates folder) is never looked at."""
    places = [name for name in top_level if store.exists(name)] + _project_places(store)
    return sorted(p for p in places if not posixpath.basename(p).startswith("_") and not exists(store, p)
                  and _uncommitted_files(store, p))


def remove_uncommitted(store: Store, rel: str, keep_hours: int, dry_run: bool = False) -> dict:
    """Remove the data files of a never-committed table folder once they are older than ``keep_hours`` (younger
    ones stay, so the killed run can still resume): vacuum's part for a table with no log to vacuum by."""
    cutoff_ns = time.time_ns() - keep_hours * 3600 * 10**9
    old = [i.path for i in _uncommitted_files(store, rel) if i.mtime_ns is not None and i.mtime_ns < cutoff_ns]
    if not dry_run:
        for path in old:
            store.fs.delete_file(path)
    return {"table": rel, "version_before": None, "version_after": None, "compacted": {}, "files_removed": len(old)}


def maintain(store: Store, rel: str, keep_hours: int, optimize: bool = False, dry_run: bool = False) -> dict:
    """Optimize (compact small files; a new version with the same rows), checkpoint, then vacuum files no version
    within ``keep_hours`` needs, and files never committed once they are older than that."""
    table = open_table(store, rel)
    out = {"table": rel, "version_before": table.version(), "compacted": {}}
    if optimize and not dry_run:
        metrics = table.optimize.compact()
        out["compacted"] = {k: metrics.get(k) for k in ("numFilesAdded", "numFilesRemoved")}
        table = open_table(store, rel)
    if not dry_run:
        table.create_checkpoint()
    removed = table.vacuum(retention_hours=keep_hours, dry_run=dry_run, enforce_retention_duration=False, full=True)
    out.update(files_removed=len(removed), version_after=open_table(store, rel).version())
    return out
