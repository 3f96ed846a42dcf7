"""The data plane at scale: ``python tests/perf/nightly_scale.py [--photos 1000000] [--users 200000] [--dim 128]``.

Not part of ``make test`` (about an hour on 2 cores at the default sizes). It builds two synthetic stores directly in
the table layout (random unit embeddings, no photos drawn, untrained small models saved with the library's own
functions): one of ``--photos`` photos and ``--users`` users, one of a tenth of that. On each it runs the real
``jobs.features``; then the real ``jobs.nightly`` with ``--generator none`` on ``--small-pairs`` (20 k) and on
``--large-pairs`` (2 M) candidates of the large store, with about 1% bad pairs (unknown users and businesses, empty
ids, repeated pairs), on the small pairs of the small store, and with the smallest PC²L generator on the small pairs
of the large store. It prints, as measured in this run:

- the driver's peak RSS at both pair counts and their ratio (goal: <= 1.25);
- the largest ShowcaseWriter actor's peak RSS (and the largest Ray worker's) at the small and the large store, and
  their ratio (goal: <= 1.25);
- pairs/s of each run; a Serve-like lookup process's RSS (FeatureLookup + PublishedShowcases over the large store,
  1,000 fresh lookups and 1,000 published lookups);
- the check: every good pair exactly once in the showcases, every bad pair in the quarantine with its reason.

Peak RSS is sampled every 0.2 s with psutil (processes by pid for the driver, by command line for Ray workers: the
writers, the wave runners that run the nightly's Ray Data passes, and any Ray worker).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from showcase_core import registry  # noqa: E402
from showcase_core import tables as delta  # noqa: E402
from showcase_core.data.schema import IMAGES, REVIEWS  # noqa: E402
from showcase_core.store import Store  # noqa: E402

ENCODER = "synthetic-unit"
CHUNK = 100_000


def build_store(root: str, photos: int, users: int, businesses: int, dim: int, seed: int) -> dict:
    """Reviews (one per user and business drawn; 4 photos each on average), images and embeddings, as Delta tables
    committed with the library (a run record for ingest), plus untrained DPP and PC²L models. Memory: one chunk."""
    rng = np.random.default_rng(seed)
    store = Store.open(root)
    reviews_n = max(users, photos // 4)
    review_user = np.concatenate([np.arange(users), rng.integers(0, users, reviews_n - users)])
    review_business = rng.integers(0, businesses, reviews_n)
    pairs = np.unique(review_user.astype(np.int64) * businesses + review_business)  # one review per (user, business)
    review_user, review_business = pairs // businesses, pairs % businesses
    photo_review = np.sort(np.concatenate([np.arange(len(pairs)), rng.integers(0, len(pairs), photos - len(pairs))]))
    files = {"reviews": [], "images": [], "emb_images": [], "emb_texts": []}
    for start in range(0, len(pairs), CHUNK):
        idx = np.arange(start, min(start + CHUNK, len(pairs)))
        u, b = review_user[idx], review_business[idx]
        lo, hi = np.searchsorted(photo_review, [idx[0], idx[-1] + 1])
        pics = [[] for _ in idx]
        for p in range(lo, hi):
            pics[photo_review[p] - idx[0]].append(f"p{p:08d}")
        review_ids = [f"u{x:07d}_b{y:06d}" for x, y in zip(u, b)]
        reviews = pa.Table.from_pydict({
            "review_id": review_ids, "user_id": [f"u{x:07d}" for x in u], "business_id": [f"b{y:06d}" for y in b],
            "rating": np.full(len(idx), 4.0, np.float32), "review_text": ["synthetic"] * len(idx),
            "split": ["train"] * len(idx), "pic_ids": pics, "history": [[] for _ in idx],
            "time_ms": rng.integers(1.5e12, 1.7e12, len(idx)), "source": ["synthetic"] * len(idx),
            "position": [str(i) for i in idx]}, schema=REVIEWS)
        files["reviews"].append(delta.write_file(store, "tables/reviews", reviews, f"part-{start:09d}.parquet"))
        photo_idx = np.arange(lo, hi)
        owner = photo_review[photo_idx]
        images = pa.Table.from_pydict({
            "image_id": [f"p{p:08d}" for p in photo_idx], "review_id": [review_ids[o - idx[0]] for o in owner],
            "user_id": [f"u{review_user[o]:07d}" for o in owner],
            "business_id": [f"b{review_business[o]:06d}" for o in owner], "split": ["train"] * len(photo_idx),
            "uri": [f"s3://synthetic/images/p{p:08d}.jpg" for p in photo_idx]}, schema=IMAGES)
        files["images"].append(delta.write_file(store, "tables/images", images, f"part-{start:09d}.parquet"))
        for kind, ids in (("emb_images", images.column("image_id")), ("emb_texts", [f"review:{r}" for r in review_ids])):
            vectors = rng.standard_normal((len(ids), dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            table = pa.table({"id": pa.array(ids, pa.string()),
                              "embedding": pa.ListArray.from_arrays(np.arange(0, len(ids) * dim + 1, dim, dtype=np.int32),
                                                                    vectors.reshape(-1))})
            rel = f"embeddings/{ENCODER}/{kind[4:]}"
            files[kind].append(delta.write_file(store, rel, table, f"part-{start:09d}.parquet"))
    versions = {}
    for name in ("reviews", "images"):
        versions[name] = delta.commit(store, f"tables/{name}", files[name], REVIEWS if name == "reviews" else IMAGES,
                                      run_id="synthetic", stage="ingest").version
    for kind in ("images", "texts"):
        delta.commit(store, f"embeddings/{ENCODER}/{kind}", files[f"emb_{kind}"], None, run_id="synthetic",
                     stage="embed")
    store.record_run("ingest", "synthetic", versions)
    registry.publish_encoder(store, ENCODER, {"synthetic": True})
    save_models(store, dim)
    return {"reviews": len(pairs), "photos": photos, "users": users, "businesses": businesses,
            "reviewed": np.unique(review_business)}  # a business nobody reviewed is unknown to the nightly


def save_models(store: Store, dim: int) -> None:
    import torch

    from showcase_core.generation.model import DEFAULT_CONFIG, PC2L, save_pc2l
    from showcase_core.generation.tokenizer import train_tokenizer
    from showcase_core.selection.kernel import DPPKernel, save_dpp

    torch.manual_seed(0)
    dpp = DPPKernel(dim)
    uri = store.uri("models", "dpp", "synthetic", "img+text")
    save_dpp(dpp.state_dict(), {**dpp.config(), "encoder_id": ENCODER}, uri, {"name": "dpp", "untrained": True})
    registry.publish(store, "dpp", "synthetic", uri, ENCODER, variants={"img+text": uri})
    tokenizer = train_tokenizer(["the ramen was great and the staff kind"] * 50, vocab_size=400)
    config = {**DEFAULT_CONFIG, "clip_dim": dim, "d_model": 32, "heads": 2, "encoder_layers": 1, "decoder_layers": 1,
              "vocab_size": len(tokenizer), "max_length": 16}
    uri = store.uri("models", "pc2l", "synthetic", "pc2l")
    save_pc2l(PC2L(config), tokenizer, uri, {"name": "pc2l", "untrained": True})
    registry.publish(store, "pc2l", "synthetic", uri, ENCODER, variants={"pc2l": uri})


def write_candidates(folder: str, n: int, world: dict, seed: int) -> dict:
    """n good distinct pairs plus ~1% bad ones, in Parquet files of CHUNK rows; returns the expected outcome."""
    rng = np.random.default_rng(seed)
    draws = int(n * 1.2) + 100
    codes = np.unique(rng.integers(0, world["users"], draws).astype(np.int64) * world["businesses"]
                      + rng.choice(world["reviewed"], draws))
    rng.shuffle(codes)
    codes = codes[:n]
    n = len(codes)  # fewer when the world has fewer distinct pairs
    bad_each = max(1, n // 400)
    users = [f"u{x:07d}" for x in codes // world["businesses"]]
    businesses = [f"b{x:06d}" for x in codes % world["businesses"]]
    bad = {"unknown_user": ([f"u-none-{i}" for i in range(bad_each)], businesses[:bad_each]),
           "unknown_business": (users[:bad_each], [f"b-none-{i}" for i in range(bad_each)]),
           "missing_field": ([""] * bad_each, businesses[:bad_each]),
           "duplicate_pair": (users[-bad_each:], businesses[-bad_each:])}
    all_users = users + [u for us, _ in bad.values() for u in us]
    all_businesses = businesses + [b for _, bs in bad.values() for b in bs]
    scores = rng.random(len(all_users))
    scores[n:] *= 0.5  # a repeat scores lower than the pair it repeats: the original is the one kept
    os.makedirs(folder, exist_ok=True)
    order = rng.permutation(len(all_users))
    for i, start in enumerate(range(0, len(order), CHUNK)):
        take = order[start:start + CHUNK]
        pq.write_table(pa.table({"user_id": [all_users[j] for j in take], "business_id": [all_businesses[j] for j in take],
                                 "score": scores[take]}), f"{folder}/part-{i:05d}.parquet")
    return {"good": n, "bad": {k: bad_each for k in bad}, "rows": len(all_users)}


class PeakRSS:
    """Peak RSS (bytes) of a process and, separately, of Ray workers whose command line names a class."""

    def __init__(self, pid: int):
        self.pid, self.driver, self.workers, self.writers, self.waves, self._stop = pid, 0, 0, 0, 0, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop:
            try:
                self.driver = max(self.driver, psutil.Process(self.pid).memory_info().rss)
            except psutil.Error:
                pass
            for p in psutil.process_iter(["cmdline", "memory_info"]):
                cmd = " ".join(p.info["cmdline"] or [])
                rss = p.info["memory_info"].rss if p.info["memory_info"] else 0
                if "ray::" in cmd or "default_worker.py" in cmd or "ShowcaseWriter" in cmd:
                    self.workers = max(self.workers, rss)
                if "ShowcaseWriter" in cmd:
                    self.writers = max(self.writers, rss)
                if "run_wave" in cmd:  # the nightly's process that runs one wave's Ray Data pass
                    self.waves = max(self.waves, rss)
            time.sleep(0.2)

    def stop(self):
        self._stop = True
        self.thread.join()


def run_job(args: list[str], env: dict) -> tuple[float, PeakRSS, str]:
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    peak = PeakRSS(proc.pid)
    out, _ = proc.communicate()
    peak.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:1])} failed ({proc.returncode}):\n{out[-4000:]}")
    return time.monotonic() - started, peak, out


def check_outcome(root: str, date: str, expected: dict) -> str:
    import polars as pl

    from showcase_core.showcase import read_showcases

    store = Store.open(root)
    keys = pl.from_arrow(read_showcases(root, date, columns=["user_id", "business_id"]))
    unique = keys.unique().height
    quarantine = pl.from_arrow(delta.read(store, "showcases_quarantine", filters=[("dt", "=", date)],
                                          columns=["reason"]))
    reasons = dict(quarantine.group_by("reason").len().iter_rows())
    ok = keys.height == unique == expected["good"] and reasons == expected["bad"]
    return (f"{'OK' if ok else 'FAILED'}: {keys.height:,} showcases ({unique:,} distinct, {expected['good']:,} good "
            f"pairs), quarantined {reasons} (planted {expected['bad']})"), ok


def serve_rss(root: str) -> str:
    """A Serve replica's lookups in a fresh process: 1,000 fresh feature lookups + 1,000 published rows."""
    code = f"""
import sys, time, psutil, numpy as np
sys.path.insert(0, {REPO!r})
from showcase_core.features import FeatureLookup
from showcase_core.showcase import PublishedShowcases, read_showcases
from showcase_core.store import Store
store = Store.open({root!r})
base = psutil.Process().memory_info().rss
look = FeatureLookup(store, {ENCODER!r}, cache_rows=10000)
published = PublishedShowcases(store, cache_rows=10000)
rng = np.random.default_rng(1)
t = time.monotonic()
for i in rng.integers(0, 10000, 1000):
    look.rows("users", [f"u{{i:07d}}"]); look.rows("businesses", [f"b{{i % 3000:06d}}"])
fresh = (time.monotonic() - t) / 1000
pairs = read_showcases({root!r}, columns=["user_id", "business_id"]).slice(0, 1000).to_pylist()
t = time.monotonic()
found = sum(published.get(p["user_id"], p["business_id"]) is not None for p in pairs)
got = (time.monotonic() - t) / 1000
print(f"replica-like process: RSS {{psutil.Process().memory_info().rss / 2**20:.0f}} MiB (imports {{base / 2**20:.0f}} MiB);"
      f" feature lookup {{fresh * 1000:.1f}} ms/pair, published lookup {{got * 1000:.1f}} ms ({{found}}/1000 found)")
"""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def serve_replica_rss(root: str, env: dict, users: int, businesses: int, requests: int = 1000) -> str:
    """The real Serve app (jobs.serve) on the store: ``requests`` fresh POSTs of random pairs and as many GETs of
    published pairs, then the replica's RSS (by its command line)."""
    import socket

    import httpx

    from showcase_core.showcase import read_showcases

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "jobs.serve", "--root", root, "--port", str(port), "--num-gpus", "0",
                             "--num-cpus", "1"], cwd=REPO, env={k: v for k, v in env.items() if k != "RAY_ADDRESS"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        rng = np.random.default_rng(7)
        published = read_showcases(root, columns=["user_id", "business_id"]).slice(0, requests).to_pylist()
        statuses: dict = {}
        started = time.monotonic()
        for u, b in zip(rng.integers(0, users, requests), rng.integers(0, businesses, requests)):
            r = httpx.post(f"{url}/v1/showcases", json={"user_id": f"u{u:07d}", "business_id": f"b{b:06d}"},
                           timeout=60)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        fresh = (time.monotonic() - started) / requests
        started = time.monotonic()
        found = 0
        for p in published:
            r = httpx.get(f"{url}/v1/showcases/{p['user_id']}/{p['business_id']}", timeout=60)
            found += r.status_code == 200 and r.json()["source"] == "precomputed"
        lookup = (time.monotonic() - started) / max(1, len(published))
        replicas = [q for q in psutil.process_iter(["cmdline", "memory_info"])
                    if "ServeReplica:showcases:ShowcaseModel" in " ".join(q.info["cmdline"] or [])]
        rss = max(q.info["memory_info"].rss for q in replicas) / 2**20 if replicas else float("nan")
        return (f"Serve model replica after {requests:,} fresh POSTs (statuses {statuses}, {fresh * 1000:.0f} ms each) and "
                f"{len(published):,} GETs of published pairs ({found:,} precomputed, {lookup * 1000:.0f} ms each): RSS "
                f"{rss:.0f} MiB")
    finally:
        proc.send_signal(2)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--businesses", type=int, default=30_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--small-pairs", type=int, default=20_000)
    parser.add_argument("--large-pairs", type=int, default=2_000_000)
    parser.add_argument("--workdir", default="")
    parser.add_argument("--serve-root", default="", help="only measure the Serve replica on this built store")
    args = parser.parse_args()
    if args.serve_root:
        print(serve_replica_rss(args.serve_root, dict(os.environ), args.users, args.businesses), flush=True)
        return 0
    import ray

    work = args.workdir or tempfile.mkdtemp(prefix="nightly-scale-")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    results, lines, ok_all = {}, [], True
    for name, scale in (("small", 10), ("large", 1)):
        root = f"{work}/{name}"
        t = time.monotonic()
        world = build_store(root, args.photos // scale, args.users // scale, args.businesses // scale, args.dim, 0)
        built = time.monotonic() - t
        seconds, _, _ = run_job(["jobs.features", "--root", root, "--encoder", ENCODER], env)
        lines.append(f"{name} store: {world['photos']:,} photos, {world['reviews']:,} reviews, {world['users']:,} users, "
                     f"{world['businesses']:,} businesses, dim {args.dim}: built in {built:.0f} s, features in "
                     f"{seconds:.0f} s")
        print(lines[-1], flush=True)
        runs = [("none", args.small_pairs)] + ([("none", args.large_pairs), ("pc2l", args.small_pairs)]
                                               if name == "large" else [])
        for i, (generator, n) in enumerate(runs):
            expected = write_candidates(f"{work}/cands-{name}-{i}", n, world, seed=i)
            date = f"2026-01-{i + 1:02d}"
            seconds, peak, out = run_job(["jobs.nightly", "--root", root, "--candidates", f"{work}/cands-{name}-{i}",
                                          "--date", date, "--generator", generator], env)
            said, ok = check_outcome(root, date, expected)
            ok_all &= ok
            results[(name, generator, n)] = peak
            lines.append(f"nightly {name} store, --generator {generator}, {expected['rows']:,} candidates: {seconds:.0f} s "
                         f"({n / seconds:.0f} pairs/s end to end), driver peak RSS {peak.driver / 2**20:.0f} MiB, largest "
                         f"ShowcaseWriter {peak.writers / 2**20:.0f} MiB, largest wave runner {peak.waves / 2**20:.0f} MiB, "
                         f"largest Ray worker {peak.workers / 2**20:.0f} MiB; {said}")
            print(lines[-1], flush=True)
        if name == "large":
            lines.append(serve_rss(root))
            print(lines[-1], flush=True)
            lines.append(serve_replica_rss(root, env, world["users"], world["businesses"]))
            print(lines[-1], flush=True)
    small_pairs, large_pairs = results[("large", "none", args.small_pairs)], results[("large", "none", args.large_pairs)]
    small_world = results[("small", "none", args.small_pairs)]
    lines.append(f"driver peak RSS, {args.large_pairs:,} vs {args.small_pairs:,} pairs: "
                 f"{large_pairs.driver / small_pairs.driver:.2f}x (goal <= 1.25)")
    lines.append(f"largest ShowcaseWriter peak RSS, {args.photos:,} vs {args.photos // 10:,} photos ({args.small_pairs:,} "
                 f"pairs each): {small_pairs.writers / small_world.writers:.2f}x (goal <= 1.25); largest Ray worker "
                 f"{small_pairs.workers / small_world.workers:.2f}x")
    lines.append("every good pair exactly once, every bad pair quarantined with its reason: "
                 + ("yes" if ok_all else "NO"))
    print("\n".join(lines[-3:]), flush=True)
    with open(f"{work}/figures.json", "w") as f:
        json.dump(lines, f, indent=1)
    print(f"figures: {work}/figures.json", flush=True)
    ray.shutdown()
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
