"""Which failures of a nightly wave's pass are run again: Ray's errors for a lost node, actor, worker or object,
however Ray Data wrapped them; nothing else."""

import ray.exceptions as rex
from ray.data.exceptions import SystemException

from jobs.nightly import QUARANTINE_TABLE, TABLE, lost_to_the_cluster, units_done


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
