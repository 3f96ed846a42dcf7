"""jobs.serve over real HTTP on 127.0.0.1, in the session's local Ray: health, fresh POSTs (one pair and a list),
precomputed vs fresh GETs after a nightly publish, every kind of bad input answered with a JSON 4xx, a bounded load
test (500 requests, 32 in flight) batched and unbatched, and locust loads (64 users; 600 requests, or
SHOWCASE_LOAD_REQUESTS) with a model replica SIGKILLed mid-run, at steady state and through a scale-down: not one failed
request."""

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import psutil
import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from ray import serve

from jobs import ingest, nightly
from jobs import serve as serve_job
from jobs.common import run
from showcase_core import read_showcases
from showcase_core.data.schema import SHOWCASES
from showcase_core.showcase import publication, resolve_models
from showcase_core.store import Store
from tests.conftest import copy_root, embed_with_features
from tests.integration.test_nightly import write_candidates

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATE = "2026-11-21"
LATER_DATE = "2026-11-22"  # published while the service runs
NO_PHOTOS = "b-nopix"  # a business whose only photo cannot be decoded: reviewed, but nothing to show
SETTINGS = {"config": os.path.join(REPO, "cluster", "configs", "serve.yaml"),  # the cluster's, sized for this machine
            "num_gpus": 0, "num_cpus": 0.5, "min_replicas": 1, "max_replicas": 1, "max_pairs": 4,
            # one ingress replica (its /healthz counts are the ingress's), taking no CPU: it only routes, and the
            # nightly of test 4 needs the local Ray's other CPUs
            "ingress_replicas": 1, "ingress_num_cpus": 0,
            # one replica takes all 32 requests of the load test: requests beyond replicas x max_ongoing_requests wait
            # in the proxy, which retries with backoff and serves several times fewer requests/s
            "max_ongoing_requests": 32, "max_batch_size": 16, "batch_wait_timeout_s": 0.01, "refresh_s": 1}
FIELDS = set(SHOWCASES.names)
LOAD_REQUESTS, CONCURRENCY = 250, 32  # enough for batches to form (checked below); 500 took 31 s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def root(ray_local, tiny_world, trained_template, tmp_path_factory):
    """The trained tiny ROOT with the world ingested again plus one review of NO_PHOTOS (embed then adds what is new,
    the features are rebuilt; the small models stay), with two pairs published for DATE."""
    world = str(tmp_path_factory.mktemp("serve-world") / "world")
    shutil.copytree(tiny_world[0], world)
    with open(f"{world}/filter_all_t.json") as f:
        gest = json.load(f)
    user = gest["train"][0]["user_id"]
    gest["test"].insert(0, {"user_id": user, "business_id": NO_PHOTOS, "rating": 4, "review_text": "a photo was lost.",
                            "history_reviews": [], "pics": ["pbroken0"]})
    with open(f"{world}/filter_all_t.json", "w") as f:
        json.dump(gest, f)
    with open(f"{world}/images/pbroken0.jpg", "wb") as f:
        f.write(b"\xff\xd8 not a jpeg")  # there, so ingest keeps the review; undecodable, so embed quarantines it
    root = copy_root(trained_template, tmp_path_factory, "serve")
    assert run("ingest", ingest.main, ["--root", root, "--gest", f"{world}/filter_all_t.json"]) == 0
    embed_with_features(root)
    reviews = Store.open(root).read_table("reviews", ["user_id", "business_id"]).to_pylist()
    published = [{"user_id": r["user_id"], "business_id": r["business_id"], "score": 0.5} for r in reviews[:2]]
    candidates = write_candidates(tmp_path_factory.mktemp("serve-candidates") / "c.parquet", published)
    assert run("nightly", nightly.main, ["--root", root, "--candidates", candidates, "--date", DATE]) == 0
    return root


@pytest.fixture(scope="module")
def pairs(root):
    """(published pairs, every other pair that can get a showcase)."""
    store = Store.open(root)
    reviews = store.read_table("reviews", ["user_id", "business_id"]).to_pylist()
    users = sorted({r["user_id"] for r in reviews})
    businesses = sorted({r["business_id"] for r in reviews} - {NO_PHOTOS})
    published = [(r["user_id"], r["business_id"]) for r in read_showcases(root).to_pylist()]
    others = [(u, b) for u in users for b in businesses if (u, b) not in published]
    return published, others


@pytest.fixture(scope="module")
def service(root):
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(serve_job.build_app({"root": root, **SETTINGS}), name=serve_job.APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def test_healthz(service, root):
    health = httpx.get(f"{service}/healthz", timeout=30)
    assert health.status_code == 200, health.text
    body = health.json()
    assert body["status"] == "ok" and body["latest_date"] == DATE
    store = Store.open(root)
    meta = store.read_json(f"features/{body['models']['encoder_id']}/_FEATURES.json")
    assert body["tables"]["features_run_id"] == meta["run_id"]
    assert body["tables"]["features"] == {k: v["version"] for k, v in meta["tables"].items()}
    assert body["tables"]["showcases"] == publication(store, DATE)["version"]
    assert set(body["cache"]) == {"published", "users", "businesses"}
    assert body["models"] == resolve_models(Store.open(root), "img+text", "pc2l")
    assert body["settings"]["batching"] is True and body["settings"]["max_batch_size"] == 16


def test_post_one_pair_and_a_list(service, root, pairs):
    _, others = pairs
    photos = {}
    for r in Store.open(root).read_table("images", ["image_id", "business_id"]).to_pylist():
        photos.setdefault(r["business_id"], set()).add(r["image_id"])
    user, business = others[0]
    one = httpx.post(f"{service}/v1/showcases", json={"user_id": user, "business_id": business}, timeout=60)
    assert one.status_code == 200, one.text
    row = one.json()
    assert set(row) == FIELDS | {"source"} and row["source"] == "fresh"
    assert (row["user_id"], row["business_id"]) == (user, business)
    assert 1 <= len(row["image_ids"]) <= 3 and set(row["image_ids"]) <= photos[business]
    assert len(row["image_uris"]) == len(row["image_scores"]) == len(row["image_ids"])
    assert all(os.path.exists(u) for u in row["image_uris"])
    assert row["run_id"].startswith("serve-") and isinstance(row["explanation"], str)

    chosen = others[1:5]
    many = httpx.post(f"{service}/v1/showcases", json={"pairs": [{"user_id": u, "business_id": b} for u, b in chosen]},
                      timeout=60)
    assert many.status_code == 200, many.text
    rows = many.json()["showcases"]
    assert [(r["user_id"], r["business_id"]) for r in rows] == chosen  # in the order asked
    assert all(set(r) == FIELDS | {"source"} and r["source"] == "fresh" and r["image_ids"] for r in rows)


def test_get_precomputed_else_fresh(service, root, pairs):
    published, others = pairs
    manifest = publication(Store.open(root), DATE)
    stored = {(r["user_id"], r["business_id"]): r for r in read_showcases(root).to_pylist()}
    for user, business in published:
        got = httpx.get(f"{service}/v1/showcases/{user}/{business}", timeout=60)
        assert got.status_code == 200, got.text
        row = got.json()
        assert row["source"] == "precomputed" and row["date"] == DATE and row["run_id"] == manifest["run_id"]
        assert {k: row[k] for k in FIELDS} == stored[(user, business)]
        # a fresh showcase of the same pair picks the same photos: the same models and the same user profile
        fresh = httpx.post(f"{service}/v1/showcases", json={"user_id": user, "business_id": business}, timeout=60)
        assert fresh.status_code == 200 and fresh.json()["image_ids"] == row["image_ids"], fresh.text
    user, business = others[-1]
    got = httpx.get(f"{service}/v1/showcases/{user}/{business}", timeout=60)
    assert got.status_code == 200, got.text
    assert got.json()["source"] == "fresh" and "date" not in got.json() and got.json()["image_ids"]


def test_a_date_published_after_start_is_served_without_a_redeploy(service, root, pairs, tmp_path):
    published, _ = pairs
    user, business = published[0]
    before = httpx.get(f"{service}/healthz", timeout=30).json()
    candidates = write_candidates(tmp_path / "c.parquet", [{"user_id": user, "business_id": business, "score": 0.9}])
    assert run("nightly", nightly.main, ["--root", root, "--candidates", candidates, "--date", LATER_DATE]) == 0
    deadline, row = time.monotonic() + 30, {}
    while time.monotonic() < deadline and row.get("date") != LATER_DATE:
        time.sleep(0.5)
        row = httpx.get(f"{service}/v1/showcases/{user}/{business}", timeout=60).json()
    assert row["source"] == "precomputed" and row["date"] == LATER_DATE and row["candidate_score"] == pytest.approx(0.9), row
    after = httpx.get(f"{service}/healthz", timeout=30).json()
    assert after["pid"] == before["pid"] and after["latest_date"] == LATER_DATE  # the same replica, no restart
    assert after["tables"]["showcases"] > before["tables"]["showcases"]


def test_bad_input_gets_a_json_4xx(service, pairs):
    _, others = pairs
    user, business = others[0]
    url = f"{service}/v1/showcases"
    json_type = {"content-type": "application/json"}
    pair = {"user_id": user, "business_id": business}
    long_id = "u" * (serve_job.MAX_ID_CHARS + 1)
    cases = [  # (what, method, url, request kwargs, status, field, reason)
        ("malformed JSON", "POST", url, {"content": b'{"user_id": "u",', "headers": json_type}, 400, None, None),
        ("not UTF-8", "POST", url, {"content": b"\xff\xfe{}", "headers": json_type}, 400, None, None),
        ("empty body", "POST", url, {"content": b"", "headers": json_type}, 422, None, None),
        ("not an object", "POST", url, {"json": [pair]}, 422, None, None),
        ("form-encoded", "POST", url, {"data": pair}, 415, None, None),
        ("no business_id", "POST", url, {"json": {"user_id": user}}, 422, None, None),
        ("number id", "POST", url, {"json": {"user_id": user, "business_id": 7}}, 422, "business_id", None),
        ("null id", "POST", url, {"json": {"user_id": None, "business_id": business}}, 422, "user_id", None),
        ("empty id", "POST", url, {"json": {"user_id": "", "business_id": business}}, 422, "user_id", None),
        ("unknown key", "POST", url, {"json": {**pair, "user": user}}, 422, "user", None),
        ("both forms", "POST", url, {"json": {**pair, "pairs": [pair]}}, 422, None, None),
        ("empty list", "POST", url, {"json": {"pairs": []}}, 422, "pairs", None),
        ("pairs not a list", "POST", url, {"json": {"pairs": pair}}, 422, "pairs", None),
        ("bad pair in list", "POST", url, {"json": {"pairs": [pair, {"user_id": user}]}}, 422, "pairs[1].business_id",
         None),
        ("id too long", "POST", url, {"json": {"user_id": long_id, "business_id": business}}, 422, "user_id", None),
        ("id too long in list", "POST", url, {"json": {"pairs": [pair, {**pair, "business_id": long_id}]}}, 422,
         "pairs[1].business_id", None),
        ("id too long in path", "GET", f"{url}/{user}/{long_id}", {}, 422, "business_id", None),
        ("too many pairs", "POST", url, {"json": {"pairs": [{"user_id": u, "business_id": b} for u, b in others[:5]]}},
         413, "pairs", None),
        ("huge body", "POST", url, {"json": {"pairs": [pair] * 5000}}, 413, "pairs", None),
        # a valid pair padded with white space past the limit, sent without a length: refused before it is held
        ("huge chunked body", "POST", url, {"content": iter([b"{", *[b" " * 2**20] * 4, json.dumps(pair)[1:].encode()]),
                                            "headers": json_type}, 413, "pairs", None),
        ("unknown user", "POST", url, {"json": {"user_id": "u-nobody", "business_id": business}}, 404, "user_id",
         "unknown_user"),
        ("unknown business", "POST", url, {"json": {"user_id": user, "business_id": "b-nowhere"}}, 404, "business_id",
         "unknown_business"),
        ("no photos", "POST", url, {"json": {"user_id": user, "business_id": NO_PHOTOS}}, 404, "business_id",
         "no_photos"),
        ("unknown in list", "POST", url, {"json": {"pairs": [pair, {**pair, "business_id": "b-nowhere"}]}}, 404,
         "pairs[1].business_id", "unknown_business"),
        ("repeated pair", "POST", url, {"json": {"pairs": [pair, {"user_id": "u-nobody", "business_id": business},
                                                           pair]}}, 422, "pairs[2]", "duplicate_pair"),
        ("unknown user, GET", "GET", f"{url}/u-nobody/{business}", {}, 404, "user_id", "unknown_user"),
        ("no photos, GET", "GET", f"{url}/{user}/{NO_PHOTOS}", {}, 404, "business_id", "no_photos"),
        ("longest id allowed", "GET", f"{url}/{'u' * serve_job.MAX_ID_CHARS}/{business}", {}, 404, "user_id",
         "unknown_user"),
        ("no such route", "GET", f"{service}/v2/showcases", {}, 404, None, None),
        ("wrong method", "DELETE", url, {}, 405, None, None),
    ]
    with httpx.Client(timeout=60) as client:
        for what, method, target, kwargs, status, field, reason in cases:
            response = client.request(method, target, **kwargs)
            assert response.status_code == status, (what, response.status_code, response.text[:500])
            assert response.headers["content-type"] == "application/json", (what, response.headers)
            body = response.json()
            assert isinstance(body["error"], str) and body["error"] and "field" in body, (what, body)
            assert body["field"] == field, (what, body)
            if reason:
                assert body["reason"] == reason and body["errors"], (what, body)
        assert client.post(url, json=pair).status_code == 200  # and it still answers
        chunked = client.post(url, content=iter([json.dumps(pair).encode()]), headers=json_type)  # no length given
        assert chunked.status_code == 200 and chunked.json()["user_id"] == pair["user_id"], chunked.text[:500]


SCHEMA_EXAMPLES = int(os.environ.get("SHOWCASE_FUZZ_EXAMPLES", "100"))  # per operation and mode


def test_the_api_answers_as_its_schema_says(service):
    """Requests generated from the live service's own OpenAPI schema, valid and invalid, each answered and checked by
    schemathesis: no 5xx, every status declared, every body of its declared schema, invalid requests refused with a
    4xx. (schemathesis's pytest plugin does not run under pytest 9, so hypothesis drives each operation here.)"""
    # a request over the limits is refused with 413 (too many pairs, a body too large), as the schema declares
    config = schemathesis.config.SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {
        "expected-statuses": ["400", "401", "404", "405", "413", "415", "422", "429"]}}})
    schema = schemathesis.openapi.from_url(f"{service}/openapi.json", config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} == {
        ("POST", "/v1/showcases"), ("GET", "/v1/showcases/{user_id}/{business_id}"), ("GET", "/healthz")}
    statuses = {}
    for operation in operations:
        takes_input = any(key in operation.definition.raw for key in ("parameters", "requestBody"))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if takes_input else (GenerationMode.POSITIVE,):
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis.settings(max_examples=SCHEMA_EXAMPLES, deadline=None, database=None,
                                 suppress_health_check=list(hypothesis.HealthCheck))
            def answered_as_declared(case):
                response = case.call_and_validate()
                statuses.setdefault(case.operation.label, set()).add(response.status_code)

            answered_as_declared()
    print(f"\n[serve] schemathesis, statuses by operation: {statuses}")
    assert all(s < 500 for codes in statuses.values() for s in codes), statuses


async def load(url: str, pairs: list[tuple[str, str]], n: int = LOAD_REQUESTS, concurrency: int = CONCURRENCY,
               after: tuple[int, object] | None = None) -> dict:
    """n fresh single-pair POSTs, `concurrency` in flight; `after` = (k, fn): call fn once k answers are in."""
    latencies, statuses, errors, todo = [], {}, [], list(range(n))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        async def worker():
            while todo:
                user, business = pairs[todo.pop() % len(pairs)]
                started = time.perf_counter()
                try:
                    response = await client.post(f"{url}/v1/showcases", json={"user_id": user, "business_id": business})
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    if response.status_code == 200:
                        assert response.json()["business_id"] == business
                    else:
                        errors.append(f"{response.status_code} {response.text[:200]}")
                except httpx.HTTPError as e:  # a dropped connection is a failure too, never retried here
                    statuses[type(e).__name__] = statuses.get(type(e).__name__, 0) + 1
                    errors.append(repr(e)[:200])
                latencies.append(time.perf_counter() - started)
                if after and len(latencies) == after[0]:
                    after[1]()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {"statuses": statuses, "errors": errors, "n": len(latencies), "rps": len(latencies) / wall,
            "p50_ms": 1000 * latencies[len(latencies) // 2], "p95_ms": 1000 * latencies[int(len(latencies) * 0.95)]}


def figures(name: str, result: dict) -> str:
    return (f"[serve] {name}: {result['n']} requests, {CONCURRENCY} in flight: p50 {result['p50_ms']:.0f} ms, "
            f"p95 {result['p95_ms']:.0f} ms, {result['rps']:.1f} requests/s, statuses {result['statuses']}")


def test_load_batched_vs_unbatched(service, root, pairs, capsys):
    _, others = pairs
    unbatched = "/unbatched"
    serve.run(serve_job.build_app({"root": root, **SETTINGS, "batching": False}), name="unbatched",
              route_prefix=unbatched)
    try:
        results = {}
        for name, url in (("batched", service), ("unbatched", service + unbatched)):
            asyncio.run(load(url, others, n=CONCURRENCY))  # warm up: first calls into torch are slow
            before = httpx.get(f"{url}/healthz", timeout=30).json()["assembled"]
            results[name] = asyncio.run(load(url, others))
            after = httpx.get(f"{url}/healthz", timeout=30).json()["assembled"]
            calls, requests = after["calls"] - before["calls"], after["requests"] - before["requests"]
            results[name]["requests_per_assemble"] = requests / max(calls, 1)
            busy = (after["seconds"] - before["seconds"]) * results[name]["rps"] / LOAD_REQUESTS  # share of the wall
            with capsys.disabled():
                print(f"\n{figures(name, results[name])}; {requests / max(calls, 1):.2f} requests per assemble call "
                      f"(largest {after['largest_batch']}), assembling {100 * busy:.0f}% of the time", flush=True)
        for name, result in results.items():
            assert result["statuses"] == {200: LOAD_REQUESTS}, (name, result["statuses"], result["errors"][:5])
        assert results["unbatched"]["requests_per_assemble"] == 1
        assert results["batched"]["requests_per_assemble"] > 1  # 32 in flight on one replica: batches formed
        ratio = results["batched"]["rps"] / results["unbatched"]["rps"]
        with capsys.disabled():
            print(f"[serve] batched / unbatched throughput: {ratio:.2f}x", flush=True)
    finally:
        serve.delete("unbatched")


def replica_pids(url: str, want: int, deadline: float) -> set[int]:
    """The pids of the app's replicas, as their /healthz reports them (so only this session's replicas)."""
    pids: set[int] = set()
    while len(pids) < want and time.monotonic() < deadline:
        response = httpx.get(f"{url}/healthz", timeout=30)
        if response.status_code == 200:
            pids.add(response.json()["pid"])
    return pids


def running_replicas() -> int:
    status = serve.status().applications[serve_job.APP_NAME].deployments[serve_job.MODEL]
    return status.replica_states.get("RUNNING", 0)


# make test sends 600 requests per load; SHOWCASE_LOAD_REQUESTS=2000 is the full load (see the README)
LOCUST_REQUESTS, LOCUST_USERS = int(os.environ.get("SHOWCASE_LOAD_REQUESTS", "600")), 64


def locust_load(url: str, pairs: list[tuple[str, str]], out, during=None, requests: int = LOCUST_REQUESTS) -> dict:
    """``requests`` fresh POSTs from LOCUST_USERS locust users (tests/serve_locustfile.py, headless, a subprocess);
    ``during(proc)`` runs while it does. -> its report: requests, failed, failures by message, p50/p99, requests/s."""
    (out / "pairs.json").write_text(json.dumps(pairs))
    env = {**os.environ, "SHOWCASE_LOAD_PAIRS": str(out / "pairs.json"), "SHOWCASE_LOAD_REQUESTS": str(requests),
           "SHOWCASE_LOAD_REPORT": str(out / "report.json")}
    command = [sys.executable, "-m", "locust", "-f", os.path.join(REPO, "tests", "serve_locustfile.py"), "--headless",
               "-u", str(LOCUST_USERS), "-r", str(LOCUST_USERS), "--host", url, "--only-summary", "--run-time", "300s",
               "--stop-timeout", "60", "--loglevel", "WARNING"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = []
    reader = threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        if during:
            during(proc)
        proc.wait(timeout=400)
    finally:
        proc.kill()
    reader.join(timeout=10)
    with open(out / "report.json") as f:
        return {**json.load(f), "log": "".join(log)[-3000:]}


def locust_figures(name: str, result: dict) -> str:
    return (f"[serve] locust, {name}: {result['requests']} requests from {LOCUST_USERS} users: {result['failed']} "
            f"failed, p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, {result['rps']:.1f} requests/s")


def cpu_ns(pid: int) -> int:
    """The process's CPU time so far in nanoseconds, all its threads (/proc schedstat: ns, where cpu_times has ticks)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
            pass
    return total


def wait_until_busy(pid: int, seconds: float, window_s: float = 0.01) -> bool:
    """Return as soon as the process ran for most of a window of ``window_s`` or more (a model replica inside a
    batch: a background thread of an idle replica does not run for 10 ms at a stretch), or after ``seconds``; True
    when it was busy. The window is measured, since reading every thread's schedstat takes time of its own."""
    deadline = time.monotonic() + seconds
    last, last_at = cpu_ns(pid), time.monotonic_ns()
    while time.monotonic() < deadline:
        time.sleep(window_s)
        now, now_at = cpu_ns(pid), time.monotonic_ns()
        if now - last >= 0.75 * (now_at - last_at):
            return True
        last, last_at = now, now_at
    return False


def test_a_killed_model_replica_fails_no_request(service, root, pairs, tmp_path, capsys):
    """LOCUST_REQUESTS from 64 locust users with one of two model replicas SIGKILLed a quarter of the way in: every
    request answered 200 (the ingress sends a call whose replica died to the other); then the same at steady state,
    and half as many through a scale-down to one replica."""
    _, others = pairs
    two = {"root": root, **SETTINGS, "min_replicas": 2, "max_replicas": 2, "max_ongoing_requests": 32}
    serve.run(serve_job.build_app(two), name=serve_job.APP_NAME, route_prefix="/")  # same replica args: scales up
    deadline = time.monotonic() + 120
    while running_replicas() < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    pids = replica_pids(service, 2, deadline)
    assert len(pids) == 2, pids
    victim = min(pids)
    process = psutil.Process(victim)
    assert f"ServeReplica:{serve_job.APP_NAME}:{serve_job.MODEL}" in " ".join(process.cmdline())
    killed = []

    def kill_a_quarter_in(proc):
        """SIGKILL the victim once the ingress has taken a quarter of the requests, at a moment it is computing (so it
        dies with calls in flight: a replica between batches, when the ingress is the bottleneck, has none)."""
        while proc.poll() is None:
            calls = httpx.get(f"{service}/healthz", timeout=30).json()["ingress"]["calls"]
            if calls - before >= LOCUST_REQUESTS // 4:
                started = time.monotonic()
                busy = wait_until_busy(victim, seconds=30)
                os.kill(victim, signal.SIGKILL)
                killed.append(f"{calls - before} calls, {'busy' if busy else 'never busy'} after "
                              f"{time.monotonic() - started:.2f} s")
                return
            time.sleep(0.2)

    before = httpx.get(f"{service}/healthz", timeout=30).json()["ingress"]["calls"]
    result = locust_load(service, others, tmp_path, during=kill_a_quarter_in)
    health = httpx.get(f"{service}/healthz", timeout=30).json()
    with capsys.disabled():
        print(f"\n{locust_figures('a model replica SIGKILLed', result)}; killed after {killed}; the ingress "
              f"retried {health['ingress']['retried']} calls", flush=True)
    assert killed, ("the load ended before the replica was killed", result["log"])
    assert result["requests"] == LOCUST_REQUESTS, result
    assert result["failed"] == 0 and not result["failures"], (result["failures"], result["log"])
    assert health["ingress"]["retried"] >= 1 and health["ingress"]["unavailable"] == 0, health["ingress"]
    # and the deployment heals: two replicas again (one new)
    deadline = time.monotonic() + 120
    while running_replicas() < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert running_replicas() == 2
    after = replica_pids(service, 2, deadline)
    assert victim not in after and len(after) == 2, after

    steady = locust_load(service, others, tmp_path)
    with capsys.disabled():
        print(locust_figures("steady state", steady), flush=True)
    assert steady["requests"] == LOCUST_REQUESTS and steady["failed"] == 0, (steady["failures"], steady["log"])

    # a scale-down mid-load: the replica Serve stops finishes the requests it has (graceful shutdown)
    scaled = []

    def scale_down(proc):
        start = httpx.get(f"{service}/healthz", timeout=30).json()["ingress"]["calls"]
        while proc.poll() is None:
            if httpx.get(f"{service}/healthz", timeout=30).json()["ingress"]["calls"] - start >= LOCUST_REQUESTS // 8:
                serve.run(serve_job.build_app({**two, "min_replicas": 1, "max_replicas": 1}), name=serve_job.APP_NAME,
                          route_prefix="/")
                scaled.append(running_replicas())
                return
            time.sleep(0.2)

    drained = locust_load(service, others, tmp_path, during=scale_down, requests=LOCUST_REQUESTS // 2)
    with capsys.disabled():
        print(locust_figures("scaled from 2 model replicas to 1", drained), flush=True)
    assert scaled == [1], ("the load ended before the scale-down", drained["log"])
    assert drained["requests"] == LOCUST_REQUESTS // 2 and drained["failed"] == 0, (drained["failures"], drained["log"])


def test_cli_fails_fast_with_one_line(root, tmp_path, capsys):
    cases = [
        (["--root", str(tmp_path / "nowhere")], "does not exist"),
        (["--root", str(tmp_path)], "no trained dpp model"),
        (["--root", root, "--max-pairs", "0"], "--max-pairs: input should be greater than or equal to 1 (got '0')"),
        (["--root", root, "--batching", "maybe"], "--batching"),
        (["--root", root, "--min-replicas", "3", "--max-replicas", "2"], "--min-replicas"),
        (["--root", root, "--generator-variant", "gpt5"], "no 'gpt5' variant"),
        (["--root", root, "--num-cpus", "999"], "CPU"),
    ]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cases.append((["--root", root, "--num-cpus", "0.5", "--port", str(busy.getsockname()[1])], "cannot listen"))
        for argv, words in cases:
            assert run("serve", serve_job.main, argv) == 2, argv
            # Ray copies earlier tests' worker logs to this driver's stderr whenever they arrive (multi-line ones too),
            # so the check is on the job's own lines: exactly one, and no traceback anywhere
            err = capsys.readouterr().err
            ours = [line for line in err.splitlines() if line.startswith("showcase serve:")]
            assert len(ours) == 1 and words in ours[0] and "Traceback" not in err, (argv, err[-2000:])
