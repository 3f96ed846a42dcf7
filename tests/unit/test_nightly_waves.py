"""Which failures of a nightly wave's pass are run again: Ray's errors for a lost node, actor, worker or object,
however Ray Data wrapped them; nothing else. And a pass the cluster no longer fits is cancelled, not waited on."""

import os
import time
from types import SimpleNamespace

import psutil
import pytest
import ray.exceptions as rex
from ray.data.exceptions import SystemException

from jobs.nightly import (QUARANTINE_TABLE, TABLE, WaveLost, cluster_shrank, lost_to_the_cluster, units_done,
                          watched_pass)


def raised_from(cause: BaseException, outer: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise outer from inner
    except BaseException as err:
        return err


def test_a_lost_node_or_actor_is_found_through_wrapping_and_nothing_else_is():
    assert lost_to_the_cluster(rex.ActorDiedError()) == "ActorDiedError"
    assert lost_to_the_cluster(rex.NodeDiedError("node 1 died")) == "NodeDiedError"
    # Ray Data raises the task's error from a SystemException
    assert lost_to_the_cluster(raised_from(rex.WorkerCrashedError(), RuntimeError("pass"))) == "WorkerCrashedError"
    # what the pass saw when a lost node took Ray Data's footer reader: the error came back unpickled, as text
    unpickled = rex.UnserializableException("ray.exceptions.RayTaskError: ray::ListFiles()\n"
                                            "ray.exceptions.ActorDiedError: The actor died unexpectedly")
    assert lost_to_the_cluster(raised_from(unpickled, SystemException())) == "ActorDiedError"
    # a user's bug, or an unpickled error that is not a lost node, fails the run
    assert lost_to_the_cluster(ValueError("bad column")) is None
    assert lost_to_the_cluster(raised_from(KeyError("x"), SystemException())) is None
    assert lost_to_the_cluster(rex.UnserializableException("ValueError: mentions ActorDiedError only")) is None


def test_a_unit_is_done_only_when_both_its_files_came_back():
    records = {(TABLE, 0): {}, (QUARANTINE_TABLE, 0): {}, (TABLE, 1): {}, (QUARANTINE_TABLE, 2): {}}
    assert units_done(records) == {0}


def test_a_pass_the_cluster_no_longer_fits_is_cancelled_with_its_process(ray_local):
    ray = ray_local

    @ray.remote(num_returns="streaming", max_retries=0)
    def stalled_pass():
        yield os.getpid()
        time.sleep(600)  # a pass whose retried task waits for a CPU that no longer exists

    checks = []

    def shrank():
        checks.append(time.monotonic())
        return "the cluster shrank" if len(checks) == 2 else None

    got = []
    with pytest.raises(WaveLost, match="the cluster shrank"):
        for pid in watched_pass(stalled_pass.remote(), shrank, poll_s=0.2):
            got.append(pid)
    assert len(got) == 1 and len(checks) == 2  # asked only while nothing came back, until the answer was yes
    deadline = time.monotonic() + 30
    while psutil.pid_exists(got[0]) and psutil.Process(got[0]).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the cancelled pass's process is still running"
        time.sleep(0.1)

    @ray.remote(num_returns="streaming", max_retries=0)
    def finished_pass():
        for batch in (1, 2, 3):
            yield batch

    assert list(watched_pass(finished_pass.remote(), lambda: None, poll_s=0.2)) == [1, 2, 3]


def test_the_cluster_shrank_when_the_pool_planned_for_it_no_longer_fits(ray_local):
    cfg = SimpleNamespace(use_gpu=False, actors=0)  # ray_local has 2 CPUs: 2 writers of half a CPU each
    assert cluster_shrank(cfg, 2, {"num_cpus": 0.5}) is None
    assert cluster_shrank(cfg, 1, {"num_cpus": 0.5}) is None  # a pool smaller than the cluster allows still fits
    assert "3 writers" in cluster_shrank(cfg, 3, {"num_cpus": 0.5})  # planned when the cluster had a third CPU
    assert cluster_shrank(cfg, 1, {"num_cpus": 0}) is None  # planned for a single CPU: the cluster grew since
    assert "no longer fit" in cluster_shrank(cfg, 2, {"num_cpus": 1})  # writers reserving more than it allows now
