"""The weights cache without S3: a local directory stands in for the bucket (``filesystem_for`` patched), so the
lock, the atomic rename, a killed copy and a damaged cache are checked with real processes and a real disk."""

import hashlib
import json
import multiprocessing
import os
import signal
import time

import pyarrow.fs as pafs
import pytest

from showcase_core import weights
from showcase_core.store import StoreError

FORK = multiprocessing.get_context("fork")  # the children keep the test's patches


@pytest.fixture()
def bucket(tmp_path, monkeypatch):
    """s3://bucket/... served from tmp_path/bucket; the cache under tmp_path/cache."""
    remote = tmp_path / "bucket"
    (remote / "gpt2").mkdir(parents=True)
    (remote / "gpt2" / "config.json").write_text('{"n_layer": 1}')
    (remote / "gpt2" / "sub").mkdir()
    (remote / "gpt2" / "sub" / "model.bin").write_bytes(os.urandom(300_000))
    (remote / "clip.pt").write_bytes(os.urandom(100_000))
    monkeypatch.setenv("SHOWCASE_WEIGHTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "filesystem_for",
                        lambda uri: (pafs.LocalFileSystem(), str(tmp_path / uri[len("s3://"):])))
    return remote


def copies_counted(monkeypatch, log, delay=0.0):
    """Count (into file ``log``, across processes) every file the cache copies."""
    real = weights._copy_file

    def counted(fs, src, local):
        with open(log, "a") as f:
            f.write(src + "\n")
        time.sleep(delay)
        return real(fs, src, local)

    monkeypatch.setattr(weights, "_copy_file", counted)
    return lambda: len(open(log).read().splitlines()) if os.path.exists(log) else 0


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_local_paths_and_file_uris_pass_through(tmp_path):
    assert weights.local_weights(str(tmp_path / "w.pt")) == str(tmp_path / "w.pt")
    assert weights.local_weights(f"file://{tmp_path}/gpt2") == f"{tmp_path}/gpt2"
    assert weights.local_weights("relative/w.pt") == os.path.abspath("relative/w.pt")


def test_cache_root_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SHOWCASE_WEIGHTS_CACHE", str(tmp_path / "c"))
    assert weights.cache_root() == str(tmp_path / "c")
    monkeypatch.delenv("SHOWCASE_WEIGHTS_CACHE")
    assert weights.cache_root() == os.path.expanduser("~/.cache/showcase/weights")


def test_a_file_and_a_directory_are_copied_once_with_a_manifest(bucket, monkeypatch, tmp_path):
    copies = copies_counted(monkeypatch, tmp_path / "copies.log")
    local = weights.local_weights("s3://bucket/clip.pt")
    assert os.path.basename(local) == "clip.pt" and sha(local) == sha(bucket / "clip.pt")
    folder = weights.local_weights("s3://bucket/gpt2/")
    assert os.path.basename(folder) == "gpt2"
    assert sha(os.path.join(folder, "sub", "model.bin")) == sha(bucket / "gpt2" / "sub" / "model.bin")
    manifest = json.load(open(os.path.join(os.path.dirname(folder), weights.MANIFEST)))
    assert manifest["uri"] == "s3://bucket/gpt2"
    assert manifest["files"]["gpt2/sub/model.bin"]["sha256"] == sha(bucket / "gpt2" / "sub" / "model.bin")
    assert manifest["files"]["gpt2/config.json"]["size"] == len('{"n_layer": 1}')
    assert copies() == 3
    assert weights.local_weights("s3://bucket/gpt2") == folder and weights.local_weights("s3://bucket/clip.pt") == local
    assert copies() == 3  # the second calls copy nothing


def test_a_missing_object_is_one_line(bucket):
    with pytest.raises(StoreError, match=r"^no weights at s3://bucket/nope\.pt$"):
        weights.local_weights("s3://bucket/nope.pt")


def fetch(uri, out):
    out.put(weights.local_weights(uri))


def test_the_lock_makes_concurrent_processes_wait_for_one_copy(bucket, monkeypatch, tmp_path):
    copies = copies_counted(monkeypatch, tmp_path / "copies.log", delay=0.3)  # a wide window for a race
    out = FORK.Queue()
    workers = [FORK.Process(target=fetch, args=("s3://bucket/gpt2", out)) for _ in range(4)]
    [w.start() for w in workers]
    paths = {out.get(timeout=60) for _ in workers}
    [w.join(10) for w in workers]
    assert len(paths) == 1 and copies() == 2  # two files, copied by one process
    entry = os.path.dirname(os.path.dirname(paths.pop()))
    assert len(os.listdir(entry)) == 1  # one version, no temporary directory left


def copy_forever(uri):
    weights.local_weights(uri)


def test_a_killed_copy_is_never_used_and_is_cleaned_up(bucket, monkeypatch, tmp_path):
    real = weights._copy_file

    def half_then_hang(fs, src, local):
        with open(local, "wb") as f:
            f.write(b"partial")
        time.sleep(600)
        return real(fs, src, local)

    monkeypatch.setattr(weights, "_copy_file", half_then_hang)
    child = FORK.Process(target=copy_forever, args=("s3://bucket/clip.pt",))
    child.start()
    cache = tmp_path / "cache"
    deadline = time.monotonic() + 30
    while not list(cache.glob("*/.tmp-*/clip.pt")):
        assert time.monotonic() < deadline and child.is_alive()
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)  # the lock goes with the process
    child.join()
    assert [p.name for p in cache.glob("*/*") if not p.name.startswith(".")] == []  # nothing looks complete
    monkeypatch.setattr(weights, "_copy_file", real)
    local = weights.local_weights("s3://bucket/clip.pt")
    assert sha(local) == sha(bucket / "clip.pt")
    assert not list(cache.glob("*/.tmp-*"))


def test_a_damaged_cached_file_is_copied_again(bucket, monkeypatch, tmp_path):
    copies = copies_counted(monkeypatch, tmp_path / "copies.log")
    folder = weights.local_weights("s3://bucket/gpt2")
    with open(os.path.join(folder, "sub", "model.bin"), "r+b") as f:
        f.truncate(1000)
    assert sha(os.path.join(weights.local_weights("s3://bucket/gpt2"), "sub", "model.bin")) == \
        sha(bucket / "gpt2" / "sub" / "model.bin")
    assert copies() == 4
    with open(os.path.join(folder, "config.json"), "r+b") as f:  # same size, other bytes: only verify=True sees it
        f.write(b"X")
    assert weights.local_weights("s3://bucket/gpt2") == folder and copies() == 4
    assert open(weights.local_weights("s3://bucket/gpt2", verify=True) + "/config.json").read() == '{"n_layer": 1}'
    assert copies() == 6
    os.remove(os.path.join(os.path.dirname(folder), weights.MANIFEST))  # no manifest: not a complete copy
    weights.local_weights("s3://bucket/gpt2")
    assert copies() == 8


def test_a_changed_object_is_a_new_version_and_the_old_one_goes(bucket, tmp_path):
    first = weights.local_weights("s3://bucket/clip.pt")
    (bucket / "clip.pt").write_bytes(os.urandom(100_001))
    second = weights.local_weights("s3://bucket/clip.pt")
    assert second != first and sha(second) == sha(bucket / "clip.pt")
    assert not os.path.exists(first)


def test_a_copy_that_comes_up_short_is_refused(bucket, monkeypatch):
    real = weights._copy_file

    def short(fs, src, local):
        copied, digest = real(fs, src, local)
        return copied - 1, digest

    monkeypatch.setattr(weights, "_copy_file", short)
    with pytest.raises(StoreError, match="changed while being copied"):
        weights.local_weights("s3://bucket/clip.pt")
    entry = [p for p in (bucket.parent / "cache").iterdir() if p.is_dir()][0]
    assert os.listdir(entry) == []


def test_an_unreachable_s3_is_one_line(monkeypatch, tmp_path):
    from showcase_core import store

    monkeypatch.setenv("SHOWCASE_WEIGHTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    # one try, not the ~90 s of retries real work gets (the jobs' fail-fast ROOT check comes first anyway)
    monkeypatch.setattr(weights, "filesystem_for", lambda uri: store.filesystem_for(uri, fail_fast=True))
    with pytest.raises(StoreError, match=r"^cannot list weights at s3://b/w\.pt: ") as e:
        weights.local_weights("s3://b/w.pt")
    assert "\n" not in str(e.value)
