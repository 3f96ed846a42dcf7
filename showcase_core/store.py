"""ROOT (a local path, ``file://...`` or ``s3://bucket/prefix``): filesystems, small JSON objects, and the tables.

    ROOT/tables/<table>/                  Delta tables written by ingest and distill (showcase_core.tables)
    ROOT/runs/<producer>.json             the table versions the producer's last completed run committed
    ROOT/embeddings/<encoder_id>/{images,texts,quarantine}/   Delta tables written by embed
    ROOT/showcases/, ROOT/showcases_quarantine/               Delta tables partitioned by dt, written by nightly
    ROOT/models/<name>/<version>/         model files; ROOT/reports/<stage>/<run_id>.json run reports

Small JSON objects are written atomically (one PUT on S3, an ``os.replace`` locally). A producer that commits
several Delta tables writes its run record last, and readers pin the versions it names, so a reader never mixes
tables of two runs.

S3 settings come from the environment, never from files: credentials through the AWS default chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` or the instance role), ``AWS_REGION``, and for
S3-compatible servers ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (``http://host:port``).
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

LEGACY_POINTER = "_CURRENT.json"  # the pre-Delta layout's pointer; a ROOT that has it is refused
STARTS_A_ROOT = "`showcase ingest` starts one"  # the one job that may write to a ROOT with nothing under it
# which job commits each table under ROOT/tables (its run record, runs/<producer>.json, pins their versions)
PRODUCERS = {"reviews": "ingest", "images": "ingest", "quarantine": "ingest", "sentences": "ingest",
             "distilled": "distill"}


class StoreError(Exception):
    """ROOT or a path under it cannot be used (bad URI, unreachable S3, missing data). One line."""


def s3_filesystem(fail_fast: bool = False) -> pafs.S3FileSystem:
    """An S3 filesystem configured from the environment (see module docstring)."""
    kwargs = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else "http://" + endpoint)
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme or "http"
        kwargs["force_virtual_addressing"] = False
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    elif endpoint:
        kwargs["region"] = "us-east-1"
    if fail_fast:  # the start-up check: one line, fast, when S3 cannot be reached
        kwargs.update(connect_timeout=3, request_timeout=5,
                      retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
    else:  # the real work: a short outage (throttling, a restarting server) is retried with backoff, not fatal
        kwargs.update(retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=10))
    return pafs.S3FileSystem(**kwargs)


def uri_path(uri: str) -> tuple[str, str]:
    """("s3" or "local", the path inside that filesystem) of a local path, file:// or s3:// URI (no I/O)."""
    if uri.startswith("s3://"):
        rest = uri[len("s3://"):].strip("/")
        if not rest:
            raise StoreError(f"S3 URI {uri!r} names no bucket")
        return "s3", rest
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    elif "://" in uri:
        raise StoreError(f"unsupported URI scheme in {uri!r} (use a local path, file:// or s3://)")
    return "local", os.path.abspath(uri)


def filesystem_for(uri: str, fail_fast: bool = False) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path, file:// or s3:// URI."""
    kind, path = uri_path(uri)
    return (s3_filesystem(fail_fast) if kind == "s3" else pafs.LocalFileSystem()), path


def join_uri(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URI without losing the scheme."""
    return posixpath.join(base.rstrip("/"), *parts) if "://" in base else os.path.join(base, *parts)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


# a read that fails mid-stream (an S3 restart: "Failed to flush response stream") is not retried by the AWS SDK;
# these waits (1+2+4+8+15 s) ride a short outage like the tables' retries, then the error stands
RETRY_WAITS_S = (1, 2, 4, 8, 15)


def retrying(call, retry=lambda err: True):
    """``call()``, called again after each wait of RETRY_WAITS_S while it raises an OSError that ``retry`` accepts;
    then the error stands."""
    for wait in (*RETRY_WAITS_S, None):
        try:
            return call()
        except OSError as err:
            if wait is None or not retry(err):
                raise
            time.sleep(wait)


# what a retry cannot mend: nothing at the path, or a file where a folder should be (or the reverse)
NOT_THERE = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    """A whole small object, read again when the read fails mid-stream; NOT_THERE's errors at once."""
    def read_once() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    return retrying(read_once, retry=lambda err: not isinstance(err, NOT_THERE))


def read_text(fs: pafs.FileSystem, path: str) -> str:
    return read_bytes(fs, path).decode("utf-8")


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write a small object so that readers see all of it or nothing."""
    parent = posixpath.dirname(path)
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(parent, recursive=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:  # a single PUT is atomic on S3
        with fs.open_output_stream(path) as f:
            f.write(data)


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


@dataclass
class Store:
    """A ROOT URI and the filesystem behind it."""

    root: str
    fs: pafs.FileSystem
    base: str  # ROOT's path inside fs

    @classmethod
    def open(cls, root: str, fail_fast: bool = False) -> "Store":
        fs, base = filesystem_for(root, fail_fast)
        if isinstance(fs, pafs.LocalFileSystem):
            root = base  # absolute: ROOT is handed to Ray workers, which may run in another directory
        return cls(root=root.rstrip("/") if root != "/" else root, fs=fs, base=base.rstrip("/"))

    # -- paths ---------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return posixpath.join(self.base, *parts)

    def uri(self, *parts: str) -> str:
        """A URI for parts under ROOT that another process can open again."""
        if isinstance(self.fs, pafs.S3FileSystem):
            return "s3://" + self.path(*parts)
        return self.path(*parts)

    # -- checks --------------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Fail with one line if ROOT cannot be written (unreachable S3, missing bucket, no permission)."""
        probe = self.path(f".probe-{uuid.uuid4().hex}")
        try:
            if isinstance(self.fs, pafs.S3FileSystem):
                bucket = self.base.split("/", 1)[0]
                info = self.fs.get_file_info(bucket)
                if info.type == pafs.FileType.NotFound:
                    raise StoreError(f"S3 bucket {bucket!r} of ROOT {self.root} does not exist")
            else:
                self.fs.create_dir(self.base, recursive=True)
            with self.fs.open_output_stream(probe) as f:
                f.write(b"ok")
            self.fs.delete_file(probe)
        except StoreError:
            raise
        except Exception as e:  # pyarrow raises OSError subclasses with long AWS messages
            raise StoreError(f"ROOT {self.root} is not writable: {_first_line(e)}") from None

    def check_readable(self) -> None:
        """Fail with one line if ROOT cannot be read (unreachable S3, missing bucket, missing local directory)."""
        try:
            if isinstance(self.fs, pafs.S3FileSystem):  # S3 has no directories to find: check the bucket
                bucket = self.base.split("/", 1)[0]
                if self.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                    raise StoreError(f"S3 bucket {bucket!r} of ROOT {self.root} does not exist")
            elif self.fs.get_file_info(self.base).type == pafs.FileType.NotFound:
                raise StoreError(f"ROOT {self.root} does not exist ({STARTS_A_ROOT})")
        except StoreError:
            raise
        except Exception as e:  # pyarrow raises OSError subclasses with long AWS messages
            raise StoreError(f"ROOT {self.root} is not readable: {_first_line(e)}") from None

    # -- small JSON objects --------------------------------------------------------------------
    def write_json(self, rel: str, obj) -> str:
        write_bytes_atomic(self.fs, self.path(rel), json.dumps(obj, indent=2, sort_keys=True).encode())
        return self.uri(rel)

    def read_json(self, rel: str):
        try:
            return json.loads(read_text(self.fs, self.path(rel)))
        except FileNotFoundError:
            raise StoreError(f"{self.uri(rel)} does not exist") from None

    def exists(self, rel: str) -> bool:
        return exists(self.fs, self.path(rel))

    def write_report(self, stage: str, run_id: str, report: dict) -> str:
        return self.write_json(f"reports/{stage}/{run_id}.json", report)

    def write_parquet(self, rel: str, table: pa.Table) -> dict:
        """Write one plain Parquet file (staging, candidates, reports; not a table); returns {path, rows, bytes}."""
        path = self.path(rel)
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        pq.write_table(table, path, filesystem=self.fs, compression="zstd")
        return {"path": rel, "rows": table.num_rows, "bytes": self.fs.get_file_info(path).size}

    # -- Delta tables under ROOT/tables (see showcase_core.tables) ------------------------------------------------
    def check_layout(self) -> None:
        """Refuse a ROOT of the pre-Delta layout in one line that says what to do."""
        for old in (f"tables/{LEGACY_POINTER}", "showcases/LATEST"):
            if self.exists(old):
                raise StoreError(f"ROOT {self.root} has the previous layout ({old}); tables are Delta tables now: "
                                 f"ingest again into a new ROOT (showcase ingest --root NEW_ROOT --gest FILE) and rerun "
                                 f"the stages from there (or `make demo`)")

    def record_run(self, producer: str, run_id: str, tables: dict[str, int], extra: dict | None = None) -> dict:
        """Write the run record of a producer that committed several tables, last: consumers read exactly the
        versions the last completed run of that producer committed (Delta has no multi-table transaction)."""
        from . import tables as delta

        record = {"producer": producer, "run_id": run_id, "completed_at": utc_now(), **(extra or {}),
                  "tables": {name: {"version": v, "rows": delta.rows(self, f"tables/{name}", v)}
                             for name, v in tables.items()}}
        self.write_json(f"runs/{producer}.json", record)
        return record

    def table_version(self, name: str) -> dict:
        """{version, rows, run_id} of table ``name`` as its producer's last completed run committed it."""
        producer = PRODUCERS.get(name, "ingest")
        if not self.exists(f"runs/{producer}.json"):
            raise StoreError(f"table {name!r} has not been published under {self.root} (run `showcase {producer}` first)")
        record = self.read_json(f"runs/{producer}.json")
        if name not in record["tables"]:
            raise StoreError(f"table {name!r} was not published by the last {producer} run ({record['run_id']}) "
                             f"under {self.root}")
        return {**record["tables"][name], "run_id": record["run_id"]}

    def _pinned(self, name: str, version: int | None) -> int:
        from . import tables as delta

        if version is not None:
            return version
        return delta.current_version(self, f"tables/{name}", self.table_version(name)["version"])

    def read_table(self, name: str, columns: list[str] | None = None, version: int | None = None) -> pa.Table:
        """Table ``name`` at the version its producer's last completed run committed (or ``version``)."""
        from . import tables as delta

        return delta.read(self, f"tables/{name}", self._pinned(name, version), columns)

    def iter_table_batches(self, name: str, columns: list[str] | None = None, batch_size: int = 65536,
                           files_ahead: int = 4):
        """Stream the published version of a table batch by batch (memory: showcase_core.tables.iter_batches)."""
        from . import tables as delta

        yield from delta.iter_batches(self, f"tables/{name}", self._pinned(name, None), columns, batch_size,
                                      files_ahead=files_ahead)

    def read_rows_where(self, name: str, columns: list[str], key: str, values) -> pa.Table:
        """The rows of the published table ``name`` (its ``columns``, ``key`` among them) whose ``key`` is among
        ``values`` (an Arrow array), the table streamed a batch at a time: memory, the rows kept and one batch."""
        import pyarrow.compute as pc

        kept = [pa.Table.from_batches([b]).filter(pc.is_in(b.column(key), value_set=values))
                for b in self.iter_table_batches(name, columns)]
        return pa.concat_tables(kept) if kept else self.read_table(name, columns)  # no batch: the empty table

    def delete_dir(self, rel: str) -> None:
        path = self.path(rel)
        if exists(self.fs, path):
            self.fs.delete_dir(path)


def open_binary(uri: str, buffer_size: int = 1 << 22) -> io.BufferedReader:
    """A seekable, line-readable binary stream for a local path or URI."""
    fs, path = filesystem_for(uri)
    return io.BufferedReader(fs.open_input_file(path), buffer_size=buffer_size)


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
