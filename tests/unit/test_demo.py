"""jobs.demo runs every stage in one process, on one Ray instance: it must be started with the State API that the
training stages need, before ingest (the first stage that uses Ray) would start one without it."""

import pytest

from jobs import demo


def test_the_demo_starts_ray_with_the_state_api_before_the_first_stage_that_uses_ray(monkeypatch, tmp_path):
    calls = []

    class Stop(Exception):
        pass

    def stage(name, main, argv):
        calls.append(("stage", name))
        if name == "ingest":
            raise Stop

    monkeypatch.setattr(demo, "stage", stage)
    monkeypatch.setattr(demo, "start_ray", lambda state_api=False: calls.append(("start_ray", state_api)))
    with pytest.raises(Stop):
        demo.main(["--root", str(tmp_path / "root"), "--world", str(tmp_path / "world"), "--size", "tiny"])
    assert calls == [("stage", "make_world"), ("start_ray", True), ("stage", "ingest")]
