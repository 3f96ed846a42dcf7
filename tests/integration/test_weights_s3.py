"""Weights on the SeaweedFS S3 server: a GPT-2 directory and an open_clip weights file copied into the node's cache
(identical sha256s, no second copy, a changed prefix is a new version, four racing processes end with one copy), and
an encoder loaded from s3:// equal to the one loaded from the local file."""

import glob
import hashlib
import json
import os
import subprocess
import sys
import uuid

import pyarrow.fs as pafs
import pytest

from showcase_core import weights

pytestmark = pytest.mark.s3
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture()
def bucket(seaweed, tmp_path, monkeypatch):
    name = f"weights-{uuid.uuid4().hex[:8]}"
    seaweed.create_bucket(name)
    monkeypatch.setenv("SHOWCASE_WEIGHTS_CACHE", str(tmp_path / "cache"))
    return name


def upload(seaweed, local: str, key: str) -> None:
    fs = seaweed.filesystem()
    if os.path.isdir(local):
        pafs.copy_files(local, key, destination_filesystem=fs)
    else:
        with open(local, "rb") as f, fs.open_output_stream(key) as out:
            out.write(f.read())


def digests(folder: str) -> dict:
    return {os.path.relpath(p, folder): hashlib.sha256(open(p, "rb").read()).hexdigest()
            for p in glob.glob(f"{folder}/**", recursive=True) if os.path.isfile(p)}


def test_a_gpt2_directory_is_copied_once_and_loads(seaweed, bucket, tmp_path, monkeypatch):
    from showcase_core.torch_compat import ensure_torchvision

    ensure_torchvision()
    from transformers import GPT2Config, GPT2LMHeadModel

    tiny = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=64,
                                      bos_token_id=0, eos_token_id=0))
    tiny.save_pretrained(tmp_path / "gpt2")
    upload(seaweed, str(tmp_path / "gpt2"), f"{bucket}/models/gpt2")
    uri = f"s3://{bucket}/models/gpt2"

    local = weights.local_weights(uri)
    assert digests(local) == digests(str(tmp_path / "gpt2"))
    manifest = os.path.join(os.path.dirname(local), weights.MANIFEST)
    files = json.load(open(manifest))["files"]
    assert {rel.split("/", 1)[1]: f["sha256"] for rel, f in files.items()} == digests(local)
    assert all(f["mtime_ns"] for f in files.values())  # the server lists mtimes: a rewritten object is seen
    # the line build_decoder takes for gpt2_path
    decoder = GPT2LMHeadModel.from_pretrained(weights.local_weights(uri), add_cross_attention=True, local_files_only=True)
    assert decoder.transformer.wte.weight.equal(tiny.transformer.wte.weight)

    copied = []
    real = weights._copy_file
    monkeypatch.setattr(weights, "_copy_file", lambda *a: copied.append(a[1]) or real(*a))
    before = os.stat(manifest).st_mtime_ns
    assert weights.local_weights(uri + "/") == local
    assert copied == [] and os.stat(manifest).st_mtime_ns == before

    with seaweed.filesystem().open_output_stream(f"{bucket}/models/gpt2/NOTES.md") as out:  # the prefix changed
        out.write(b"a new file")
    changed = weights.local_weights(uri)
    entry = os.path.dirname(os.path.dirname(local))
    assert changed != local and os.listdir(entry) == [os.path.basename(os.path.dirname(changed))]  # the old one went
    assert open(os.path.join(changed, "NOTES.md")).read() == "a new file" and len(copied) == len(digests(changed))


COUNTED_FETCH = """
import sys
from showcase_core import weights
copied, real = [], weights._copy_file
weights._copy_file = lambda *a: copied.append(a[1]) or real(*a)
print(weights.local_weights(sys.argv[1]), len(copied))
"""


def test_four_processes_at_once_end_with_one_copy(seaweed, bucket, tmp_path):
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "weights.bin").write_bytes(os.urandom(24 << 20))  # copying it takes a while: a real race
    (tmp_path / "big" / "config.json").write_text("{}")
    upload(seaweed, str(tmp_path / "big"), f"{bucket}/big")
    env = {**os.environ, "PYTHONPATH": REPO}
    runs = [subprocess.Popen([sys.executable, "-c", COUNTED_FETCH, f"s3://{bucket}/big"], env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [run.communicate(timeout=120) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err[-500:] for _, err in results]
    paths = {out.split()[0] for out, _ in results}
    assert len(paths) == 1 and sum(int(out.split()[1]) for out, _ in results) == 2  # two files, copied once
    local = paths.pop()
    assert digests(local) == digests(str(tmp_path / "big"))
    assert os.listdir(os.path.dirname(os.path.dirname(local))) == [os.path.basename(os.path.dirname(local))]


def test_an_encoder_from_s3_weights_is_the_one_from_the_local_file(seaweed, bucket, tmp_path):
    import open_clip
    import torch

    from showcase_core.encoders.clip import NAMED_CONFIGS, EncoderError, build_model, load_encoder, weights_fingerprint

    # open_clip loads a weights file only for a model it knows by name: register the small config under one
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "showcase-tiny-file.json").write_text(json.dumps(NAMED_CONFIGS["showcase-tiny"]))
    open_clip.add_model_config(str(tmp_path / "configs"))
    torch.manual_seed(7)
    net = build_model("showcase-tiny-file", NAMED_CONFIGS["showcase-tiny"])
    torch.save(net.state_dict(), tmp_path / "tiny-clip.pt")
    upload(seaweed, str(tmp_path / "tiny-clip.pt"), f"{bucket}/clip/tiny-clip.pt")

    local = load_encoder(model="showcase-tiny-file", pretrained=str(tmp_path / "tiny-clip.pt"), device="cpu")
    remote = load_encoder(model="showcase-tiny-file", pretrained=f"s3://{bucket}/clip/tiny-clip.pt", device="cpu")
    assert remote.encoder_id == local.encoder_id == f"showcase-tiny-file.tiny-clip.pt-{weights_fingerprint(net)}"
    with pytest.raises(EncoderError, match=f"no weights at s3://{bucket}/clip/nope.pt$"):
        load_encoder(model="showcase-tiny-file", pretrained=f"s3://{bucket}/clip/nope.pt", device="cpu")
