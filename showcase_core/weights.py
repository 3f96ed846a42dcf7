"""Weights from object storage: an s3:// weights file or directory, copied once per node into a local cache.

``local_weights(uri)`` gives a local path for weights named by a local path, file:// or s3:// URI: local ones as they
are, s3:// ones through the cache (``$SHOWCASE_WEIGHTS_CACHE``, else ``~/.cache/showcase/weights``), one entry per URI:

    <key>.lock                        flock: the processes of a node wait for the one that copies
    <key>/<version>/<name>            the copy; name is the URI's last part, so file names and extensions stay
    <key>/<version>/showcase-manifest.json    the URI and each file's size, mtime and sha256

``key`` hashes the S3 endpoint and the URI; ``version`` hashes the remote listing (paths, sizes, mtimes), so a changed
object is a new version, copied again, and the older ones are removed. A copy is streamed into a ``.tmp-*`` sibling,
each file's size checked against the listing while its sha256 is computed, the manifest written last, and the
directory renamed into place: a version directory only ever exists complete. A killed copy leaves a ``.tmp-*`` that
is never read and that the next copy removes. A later call costs one listing and a stat per file (``verify=True``
re-hashes the files against the manifest too). Errors (no such object, S3 unreachable) are one-line StoreErrors.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import posixpath
import shutil
import uuid

import pyarrow.fs as pafs

from .store import StoreError, filesystem_for, uri_path

MANIFEST = "showcase-manifest.json"  # beside the copy, never inside a copied directory
CHUNK = 8 << 20  # bytes per read: a multi-GB file streams through in constant memory


def cache_root() -> str:
    root = os.environ.get("SHOWCASE_WEIGHTS_CACHE") or "~/.cache/showcase/weights"
    return os.path.abspath(os.path.expanduser(root))


def local_weights(uri: str, verify: bool = False) -> str:
    """A local path to the weights file or directory ``uri`` (local path, file:// or s3://; see module doc)."""
    kind, path = uri_path(uri)
    if kind == "local":
        return path
    uri = "s3://" + path  # one spelling per object: no trailing slash
    name = posixpath.basename(path)
    fs, path = filesystem_for(uri)
    listing = _listing(fs, path, name, uri)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    entry = os.path.join(cache_root(), hashlib.sha256(f"{endpoint}|{uri}".encode()).hexdigest())
    version = hashlib.sha256(json.dumps(sorted(listing.items())).encode()).hexdigest()[:16]
    target = os.path.join(entry, version)
    try:
        os.makedirs(entry, exist_ok=True)
        with exclusive_lock(entry + ".lock"):
            if not _intact(target, listing, verify):
                _remove(target)
                _copy(fs, uri, listing, entry, target)
                for old in os.listdir(entry):  # older versions of a changed object; temporary ones are .tmp-*
                    if old != version and not old.startswith("."):
                        _remove(os.path.join(entry, old))
    except OSError as e:  # the local side: no space, no permission
        raise StoreError(f"cannot cache weights {uri} under {cache_root()}: {_one_line(e)}") from None
    return os.path.join(target, name)


def _listing(fs: pafs.FileSystem, path: str, name: str, uri: str) -> dict[str, list]:
    """{local relative path: [remote path, size, mtime_ns]} of the remote file, or of every file under the prefix."""
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return {name: [path, info.size, info.mtime_ns]}
        if info.type == pafs.FileType.NotFound:
            raise StoreError(f"no weights at {uri}")
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except StoreError:
        raise
    except Exception as e:  # pyarrow raises OSError subclasses with long AWS messages
        raise StoreError(f"cannot list weights at {uri}: {_one_line(e)}") from None
    files = {posixpath.join(name, posixpath.relpath(i.path, path)): [i.path, i.size, i.mtime_ns]
             for i in infos if i.type == pafs.FileType.File}
    if not files:
        raise StoreError(f"no weights at {uri} (an empty prefix)")
    return files


def _intact(target: str, listing: dict, verify: bool) -> bool:
    """Whether ``target`` is a complete copy of ``listing``: its manifest, every file at its size (and sha256)."""
    try:
        with open(os.path.join(target, MANIFEST)) as f:
            files = json.load(f)["files"]
        if sorted(files) != sorted(listing):
            return False
        for rel, meta in files.items():
            local = os.path.join(target, rel)
            if os.path.getsize(local) != meta["size"] or (verify and _sha256(local) != meta["sha256"]):
                return False
    except (OSError, ValueError, KeyError):
        return False
    return True


def _copy(fs: pafs.FileSystem, uri: str, listing: dict, entry: str, target: str) -> None:
    """Copy ``listing`` into a temporary sibling of ``target``, check it, write the manifest, rename it into place."""
    for stale in os.listdir(entry):  # the lock is ours: a .tmp-* is what a killed copy left
        if stale.startswith(".tmp-"):
            shutil.rmtree(os.path.join(entry, stale), ignore_errors=True)
    tmp = os.path.join(entry, f".tmp-{uuid.uuid4().hex}")
    try:
        files = {}
        for rel, (src, size, mtime_ns) in sorted(listing.items()):
            local = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(local), exist_ok=True)
            try:
                copied, digest = _copy_file(fs, src, local)
            except FileNotFoundError:
                raise StoreError(f"weights {uri} changed while being copied: {rel} is gone") from None
            except OSError as e:  # S3 failing past its retries, or the local disk (full, not writable)
                raise StoreError(f"cannot copy weights {uri} into {entry}: {_one_line(e)}") from None
            if copied != size:
                raise StoreError(f"weights {uri} changed while being copied: {rel} has {copied} bytes, "
                                 f"the listing said {size}")
            files[rel] = {"size": size, "mtime_ns": mtime_ns, "sha256": digest}
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump({"uri": uri, "files": files}, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, target)  # atomic: the version directory appears complete or not at all
        _fsync_dir(entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _copy_file(fs: pafs.FileSystem, src: str, local: str) -> tuple[int, str]:
    """Stream one remote file to ``local``; (bytes, sha256)."""
    h, copied = hashlib.sha256(), 0
    with fs.open_input_stream(src) as fin, open(local, "wb") as fout:
        while chunk := fin.read(CHUNK):
            h.update(chunk)
            fout.write(chunk)
            copied += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return copied, h.hexdigest()


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def exclusive_lock(path: str):
    """Hold an exclusive flock on file ``path`` (created, with its folder, if needed): one holder per machine."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:  # never deleted: a lock file removed while held would let a second holder in
        fcntl.flock(f, fcntl.LOCK_EX)  # released by the kernel when the holder exits, killed or not
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove(path: str) -> None:
    """Remove a version directory: renamed out of the way first, so no half-removed copy is ever looked at."""
    if os.path.exists(path):
        trash = os.path.join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex}")
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
