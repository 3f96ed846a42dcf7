import os

import pytest

from showcase_core.store import Store, StoreError, filesystem_for, join_uri, write_bytes_atomic


def test_filesystem_for_understands_paths_file_uris_and_rejects_other_schemes(tmp_path):
    fs, path = filesystem_for(f"file://{tmp_path}/x")
    assert path == f"{tmp_path}/x"
    assert filesystem_for("relative/dir")[1] == os.path.abspath("relative/dir")
    with pytest.raises(StoreError, match="unsupported URI scheme"):
        filesystem_for("gs://bucket/x")
    with pytest.raises(StoreError, match="names no bucket"):
        filesystem_for("s3://")


def test_join_uri_keeps_the_scheme():
    assert join_uri("s3://b/root/", "images", "p.jpg") == "s3://b/root/images/p.jpg"
    assert join_uri("/data", "p.jpg") == "/data/p.jpg"


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    fs, path = filesystem_for(str(tmp_path / "d" / "pointer.json"))
    write_bytes_atomic(fs, path, b"one")
    write_bytes_atomic(fs, path, b"two")
    assert os.listdir(tmp_path / "d") == ["pointer.json"]
    assert open(path, "rb").read() == b"two"


def test_check_writable_fails_with_one_line_on_a_read_only_root(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions; nothing to check then
            return
        with pytest.raises(StoreError, match="is not writable"):
            Store.open(str(ro / "root")).check_writable()
    finally:
        ro.chmod(0o700)
