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


def test_a_small_object_is_read_again_when_a_read_fails_mid_stream_and_a_missing_one_fails_at_once(tmp_path,
                                                                                                  monkeypatch):
    import pyarrow.fs as pafs

    from showcase_core import store as store_module

    class FailingReads(pafs.FileSystemHandler):
        """The local disk whose first ``failures`` reads break mid-stream, as S3's did during a restart."""

        def __init__(self, failures):
            self.local, self.failures = pafs.LocalFileSystem(), failures

        def open_input_stream(self, path):
            if self.failures:
                self.failures -= 1
                raise OSError("AWS Error NETWORK_CONNECTION: Failed to flush response stream")
            return self.local.open_input_stream(path)

        def get_type_name(self):
            return "failing-reads"

        def get_file_info(self, paths):
            return self.local.get_file_info(paths)

        def unused(self, *args):
            raise NotImplementedError

        get_file_info_selector = create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = unused
        delete_file = move = copy_file = open_input_file = open_output_stream = open_append_stream = unused
        normalize_path = unused

    monkeypatch.setattr(store_module, "RETRY_WAITS_S", (0.01, 0.01, 0.01))
    (tmp_path / "card.json").write_text('{"ok": 1}')
    path = str(tmp_path / "card.json")
    assert store_module.read_text(pafs.PyFileSystem(FailingReads(3)), path) == '{"ok": 1}'
    with pytest.raises(OSError, match="Failed to flush"):  # more failures than waits: the error stands
        store_module.read_text(pafs.PyFileSystem(FailingReads(4)), path)
    with pytest.raises(FileNotFoundError):
        store_module.read_bytes(pafs.PyFileSystem(FailingReads(0)), str(tmp_path / "missing.json"))
