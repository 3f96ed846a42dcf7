import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import seaweed as seaweed_server  # noqa: E402


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """A real SeaweedFS S3 server on free 127.0.0.1 ports; its settings are in os.environ for the session."""
    server = seaweed_server.start(str(tmp_path_factory.mktemp("seaweedfs")))
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    yield server
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_local(seaweed):
    """One local Ray instance for the session, started after the S3 settings are in the environment."""
    import ray

    from jobs.common import local_ray_env

    local_ray_env()  # as the jobs' own local instances have it
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    from showcase_core.data.world import make_world

    out = str(tmp_path_factory.mktemp("tiny-world"))
    return out, make_world(out, "tiny", seed=11)


def world_on_s3(seaweed, world: str, prefix: str) -> str:
    """Copy a world to a fresh bucket on the test S3 server, ingest it with ROOT on S3; returns ROOT."""
    import uuid

    import pyarrow.fs as pafs

    from jobs import ingest
    from jobs.common import run

    bucket = f"{prefix}-{uuid.uuid4().hex[:8]}"
    seaweed.create_bucket(bucket)
    pafs.copy_files(world, f"{bucket}/gest", destination_filesystem=seaweed.filesystem())
    root = f"s3://{bucket}/root"
    assert run("ingest", ingest.main, ["--root", root, "--gest", f"s3://{bucket}/gest/filter_all_t.json"]) == 0
    return root


# feature tables in several buckets even on the tiny world, so every nightly and Serve test reads across partitions
SMALL_BUCKETS = ["--users-per-bucket", "16", "--photos-per-bucket", "48"]


@pytest.fixture(scope="session")
def tiny_embedded(ray_local, tiny_world, tmp_path_factory):
    """The tiny world ingested and embedded with the (untrained) showcase-tiny CLIP, once per session: (ROOT,
    encoder_id). Tests that write models or showcases take their own copy with ``copy_root``."""
    from jobs import ingest
    from jobs.common import run

    world, _ = tiny_world
    root = str(tmp_path_factory.mktemp("tiny-embedded") / "root")
    assert run("ingest", ingest.main, ["--root", root, "--gest", f"{world}/filter_all_t.json"]) == 0
    return root, embed_with_features(root)


def embed_with_features(root: str) -> str:
    """Embed an ingested ROOT with the (untrained) showcase-tiny CLIP and build its feature tables (small buckets);
    returns the encoder id."""
    from jobs import embed, features
    from jobs.common import run
    from showcase_core.encoders.clip import load_encoder

    assert run("embed", embed.main, ["--root", root, "--clip-model", "showcase-tiny"]) == 0
    encoder_id = load_encoder(model="showcase-tiny").encoder_id
    assert run("features", features.main, ["--root", root, "--encoder", encoder_id, *SMALL_BUCKETS]) == 0
    return encoder_id


def stage_reports(store, stage: str) -> list[dict]:
    """A stage's run reports under ROOT/reports/<stage>/, in the order they were written (run ids order by the second
    a run started, then at random)."""
    import json

    import pyarrow.fs as pafs

    infos = [i for i in store.fs.get_file_info(pafs.FileSelector(store.path(f"reports/{stage}")))
             if i.path.endswith(".json")]
    return [json.loads(store.fs.open_input_stream(i.path).read()) for i in sorted(infos, key=lambda i: (i.mtime_ns,
                                                                                                         i.path))]


def copy_root(template: str, tmp_path_factory, name: str) -> str:
    import shutil

    root = str(tmp_path_factory.mktemp(name) / "root")
    shutil.copytree(template, root)
    return root


def copy_s3_root(seaweed, template: str, prefix: str) -> str:
    """A copy of an S3 ROOT in a fresh bucket of the test server (the photos and the models it names stay where the
    template's tables and registry point); returns the copy's ROOT."""
    import uuid

    import pyarrow.fs as pafs

    bucket = f"{prefix}-{uuid.uuid4().hex[:8]}"
    seaweed.create_bucket(bucket)
    fs = seaweed.filesystem()
    pafs.copy_files(template.split("://", 1)[1], f"{bucket}/root", source_filesystem=fs, destination_filesystem=fs)
    return f"s3://{bucket}/root"


SMALL_PC2L = ["--variants", "pc2l", "--epochs", "1", "--d-model", "32", "--heads", "2", "--encoder-layers", "1",
              "--decoder-layers", "1", "--vocab-size", "400", "--batch-size", "16", "--cpus-per-worker", "1",
              "--max-length", "16"]


def train_models(root: str, encoder_id: str) -> None:
    """The smallest DPP (img+text) and PC²L a nightly can run with, one epoch each."""
    from jobs import train_dpp, train_pc2l
    from jobs.common import run

    assert run("train_dpp", train_dpp.main, ["--root", root, "--encoder", encoder_id, "--epochs", "1",
                                             "--modalities", "img+text", "--cpus-per-worker", "1"]) == 0
    assert run("train_pc2l", train_pc2l.main, ["--root", root, "--encoder", encoder_id, *SMALL_PC2L]) == 0


@pytest.fixture(scope="session")
def trained_template(tiny_embedded, tmp_path_factory):
    """A copy of the tiny embedded ROOT with small DPP and PC²L models, never written to: tests copy it."""
    template, encoder_id = tiny_embedded
    root = copy_root(template, tmp_path_factory, "trained")
    train_models(root, encoder_id)
    return root


@pytest.fixture(scope="session")
def trained_root(trained_template, tmp_path_factory):
    """A copy of the trained template the nightly's and the recommender's tests publish showcases to."""
    return copy_root(trained_template, tmp_path_factory, "nightly")


@pytest.fixture(scope="session")
def s3_trained_root(seaweed, ray_local, tiny_world):
    """The same on the SeaweedFS S3 server."""
    world, _ = tiny_world
    root = world_on_s3(seaweed, world, "nightly")
    encoder_id = embed_with_features(root)
    train_models(root, encoder_id)
    return root
