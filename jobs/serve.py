"""Fresh showcases over HTTP: ``python -m jobs.serve --root ROOT [--config cluster/configs/serve.yaml] [--port 8000]``.

A Ray Serve application over the same assembly code as the nightly job: an HTTP ingress (deployment ``Showcases``,
FastAPI; no models) that calls a model deployment (``ShowcaseModel``: the models, the feature and published lookups):

  POST /v1/showcases                       {"user_id", "business_id"} -> one showcase, or {"pairs": [...]} (at most
                                           ``max_pairs``) -> {"showcases": [...]} in the order given; always computed
                                           now ("source": "fresh")
  GET  /v1/showcases/{user_id}/{business_id}   the row of the newest published date ("source": "precomputed", "date"), else
                                           computed now ("source": "fresh")
  GET  /healthz                            200 with the models, the newest published date, the table versions, the cache
                                           sizes, the settings and how one model replica's assemble calls went (calls,
                                           requests, pairs, largest batch, seconds), and the ingress replica's calls and
                                           retries; 503 when no model replica answers

Rows have the SHOWCASES fields (showcase_core.data.schema). A mistake in the request is a 4xx with a JSON body
``{"error": "...", "field": ...}``: malformed JSON 400; a body that is not JSON (Content-Type) 415; missing, extra or
wrong-typed fields and ids over 256 characters 422; a pair that cannot get a showcase 404 with check_pairs' reason
code (``reason``: ``unknown_user``, ``unknown_business``, ``no_photos``; every failing pair is under ``errors``; a
pair repeated in one request is 422 ``duplicate_pair``), and a list is answered all or nothing; more than
``max_pairs`` pairs (or a body too large to hold them, chunked too) 413. Unknown routes and methods get 404/405 in the
same shape. With ``--api-token-env``, a call without that bearer token is 401 (``/healthz`` stays open); with
``--rate-limit-per-s``, a client over its rate is 429 with ``Retry-After`` (``guard``, before any route).

Losing a model replica fails no request: every call is idempotent (a fresh showcase is a pure function of the pair and
the models; a GET reads), so a call whose model replica dies (``ActorDiedError``) or cannot be reached
(``ActorUnavailableError``) is sent again, to another replica, up to ``model_retries`` times with doubling backoff; only
then is it a 503 with ``Retry-After`` (a request that kills its replica itself is retried too, so it can take down
model_retries + 1 replicas). Serve's router stops routing to a replica once a call to it fails so. A replica
that is stopped (scale-down, redeploy, node drain) takes no new requests and finishes those it has, for up to
``graceful_shutdown_s``. The ingress holds no state, so losing an ingress replica loses only the requests inside it
(README: what a deployment puts in front so that those are retried too).

Each model replica loads the models once (its constructor) and nothing of the world: a fresh pair's features are looked
up by key in the feature tables (showcase_core.features.FeatureLookup: the one bucket partition of the id, the row
groups of its id range), and a GET of a published pair reads its row by key from the newest date of the showcases table
(showcase_core.showcase.PublishedShowcases: the one file of its business's unit, the row groups of its keys). Each
keeps an LRU cache of at most ``cache_rows`` rows in front; replica memory is the models plus these caches, whatever
the number of users, photos or published pairs. The table versions are checked at most every ``refresh_s`` seconds:
a date published (or features rebuilt) after the replicas started is served without a redeploy.

Concurrent requests are batched: ``@serve.batch`` collects up to ``max_batch_size`` requests (each a list of pairs)
for at most ``batch_wait_timeout_s`` and ``ShowcaseAssembler.assemble`` runs once for all their pairs;
``--batching false`` assembles each request on its own (one at a time), for comparison. The models are the ones
registry names as the latest when the app is built, so every replica of a deployment serves the same ones; redeploy
to pick up new ones.

The model replicas' autoscaling (min_replicas, max_replicas, target_ongoing_requests), max_ongoing_requests and
resources, and the ingress's (ingress_replicas, ingress_num_cpus, ingress_max_ongoing_requests) come from the config
(cluster/configs/serve.yaml; a RayService's serveConfigV2 overrides them there).
``build_app(args)`` is the entry for ``serve run jobs.serve:build_app root=... config=...`` and the RayService.
"""

import asyncio
import hmac
import math
import os
import signal
import socket
import time
from collections import OrderedDict
from typing import Annotated, Literal

from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from ray import serve
from ray.exceptions import RayActorError
from starlette.exceptions import HTTPException as StarletteHTTPException

from showcase_core.features import meta_for
from showcase_core.generation import DECODING
from showcase_core.settings import flag
from showcase_core.showcase import resolve_models
from showcase_core.store import Store, new_run_id, utc_now

from .common import ShowcaseSettings, UserError, exit_process, open_store, parse_args, run, setting, start_ray

APP_NAME = "showcases"
INGRESS = "Showcases"  # the HTTP routes, the guard and the retries; no models
MODEL = "ShowcaseModel"  # the models and the lookups
MAX_ID_CHARS = 256


class Settings(ShowcaseSettings):
    """Serve fresh and published showcases over HTTP (Ray Serve, FastAPI ingress)."""

    host: str = setting("127.0.0.1", "where `python -m jobs.serve` binds the HTTP proxy (a RayService sets its own)")
    port: int = setting(8000, "the HTTP port", ge=1, le=65535)
    max_pairs: int = setting(32, "pairs per POST at most", ge=1)
    batching: bool = setting(True, "batch concurrent requests into one assemble call (false: one at a time)")
    max_batch_size: int = setting(16, "requests per assemble call at most", ge=1)
    batch_wait_timeout_s: float = setting(0.01, "seconds the first request of a batch waits for more", ge=0)
    precomputed: bool = setting(True, "GET answers from the newest published date when it has the pair")
    cache_rows: int = setting(10000, "rows each replica caches per lookup (users, businesses, published pairs); "
                                     "0 = none", ge=0)
    refresh_s: float = setting(10.0, "seconds between a replica's checks for a newer date or feature tables", ge=0)
    min_replicas: int = setting(1, "autoscaling: model replicas at least (2 or more: losing one fails no request)",
                                ge=0)
    max_replicas: int = setting(1, "autoscaling: model replicas at most", ge=1)
    target_ongoing_requests: float = setting(4.0, "autoscaling: requests in flight per model replica it aims for",
                                             ge=0.01)
    max_ongoing_requests: int = setting(16, "requests a model replica takes at once (its batch queue included)", ge=1)
    num_cpus: float = setting(1.0, "CPUs per model replica (also its torch threads)", ge=0, le=1024)
    num_gpus: float = setting(0.0, "GPUs per model replica; the models run on CUDA when > 0", ge=0, le=1024)
    ingress_replicas: int = setting(1, "replicas of the HTTP ingress (no models: it checks requests, calls the model "
                                       "replicas and retries)", ge=1)
    ingress_num_cpus: float = setting(0.25, "CPUs per ingress replica", ge=0, le=1024)
    ingress_max_ongoing_requests: int = setting(256, "requests an ingress replica takes at once (each waits on a model "
                                                     "replica)", ge=1)
    model_retries: int = setting(3, "times a call is sent again when its model replica died or could not be reached "
                                    "(calls are idempotent); then 503", ge=0)
    retry_backoff_s: float = setting(0.1, "seconds before the first retry, doubling for each next one", ge=0, le=60)
    graceful_shutdown_s: float = setting(20.0, "seconds a stopping replica (scale-down, redeploy, node drain) keeps "
                                               "answering the requests it has", gt=0)
    api_token_env: str = setting("", "an environment variable holding a bearer token every API call must carry "
                                     "(Authorization: Bearer TOKEN; /healthz stays open), for a deployment without an "
                                     "authenticating ingress; empty = no token")
    rate_limit_per_s: float = setting(0.0, "requests a second one client (IP address) may make of one ingress "
                                           "replica, in bursts of --rate-limit-burst; over it 429 with Retry-After. "
                                           "0 = no limit",
                                      ge=0)
    rate_limit_burst: int = setting(200, "the requests a client may make at once before the rate applies", ge=1)
    trusted_proxies: int = setting(0, "proxies in front of Serve that append the caller to X-Forwarded-For (a load "
                                      "balancer: 1); the rate limit keys on the address they saw. 0 = the connection's "
                                      "own address", ge=0)

    @model_validator(mode="after")
    def _replica_bounds(self):
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"need --min-replicas <= --max-replicas, got {self.min_replicas} and {self.max_replicas}")
        return self

    @field_validator("num_cpus", "num_gpus", "ingress_num_cpus", "rate_limit_per_s")
    @classmethod
    def _none_or_a_share(cls, value: float, info) -> float:
        if 0 < value < 0.0001:  # Ray refuses a smaller share; a rate's Retry-After is up to 1/rate seconds
            raise ValueError(f"{flag(info.field_name)} must be 0 or at least 0.0001, got {value!r}")
        return value

    @field_validator("api_token_env")
    @classmethod
    def _token_is_set(cls, name: str) -> str:
        if name and not os.environ.get(name):  # the replicas read it from the same environment (or runtime_env)
            raise ValueError(f"the environment variable {name} is not set or empty (export {name}=<token>)")
        return name


# what each kind of replica needs (scaling settings change without a restart)
MODEL_SETTINGS = ("k", "beams", *DECODING, "batching", "max_batch_size", "batch_wait_timeout_s", "precomputed",
                  "cache_rows", "refresh_s", "num_cpus", "num_gpus")
INGRESS_SETTINGS = ("max_pairs", "api_token_env", "rate_limit_per_s", "rate_limit_burst", "trusted_proxies",
                    "model_retries", "retry_backoff_s")


def model_options(cfg: Settings) -> dict:
    return {"name": MODEL, "max_ongoing_requests": cfg.max_ongoing_requests,
            "autoscaling_config": {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                                   "target_ongoing_requests": cfg.target_ongoing_requests},
            "ray_actor_options": {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
            "graceful_shutdown_timeout_s": cfg.graceful_shutdown_s}


def ingress_options(cfg: Settings) -> dict:
    return {"name": INGRESS, "num_replicas": cfg.ingress_replicas,
            "max_ongoing_requests": cfg.ingress_max_ongoing_requests,
            "ray_actor_options": {"num_cpus": cfg.ingress_num_cpus},
            "graceful_shutdown_timeout_s": cfg.graceful_shutdown_s}


def app_for(cfg: Settings):
    """The bound application for settings: models resolved (and checked) now, loaded by each model replica."""
    store = open_store(cfg.root, writable=False)  # a serving role may not write to ROOT
    models = resolve_models(store, cfg.dpp_modality, cfg.generator_variant)
    meta_for(store, models["encoder_id"], models["generator"])  # the feature tables are there and fit
    model = ShowcaseModel.options(**model_options(cfg)).bind(store.root, models, cfg.pick(*MODEL_SETTINGS))
    return Showcases.options(**ingress_options(cfg)).bind(model, cfg.pick(*INGRESS_SETTINGS))


def build_app(args: dict):
    """``serve run jobs.serve:build_app root=ROOT config=FILE [key=value ...]`` and the RayService's import path."""
    return app_for(parse_args("serve", Settings, [f"--{key}={value}" for key, value in args.items()]))


# -- the HTTP API ---------------------------------------------------------------------------------------------------

Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]


class Pair(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    user_id: Id
    business_id: Id


class ShowcaseRequest(BaseModel):
    """One pair (user_id, business_id) or a list of them (pairs)."""

    # the two forms, for the OpenAPI schema (one_form checks them); null is no id (given keys must be strings or a list)
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"oneOf": [
        {"required": ["user_id", "business_id"], "not": {"required": ["pairs"]}},
        {"required": ["pairs"], "not": {"anyOf": [{"required": ["user_id"]}, {"required": ["business_id"]}]}}]})
    user_id: Id = None
    business_id: Id = None
    pairs: list[Pair] = Field(default=None, min_length=1, json_schema_extra={"uniqueItems": True})  # maxItems: __init__

    @model_validator(mode="after")
    def one_form(self):
        single = self.user_id is not None or self.business_id is not None
        if single and self.pairs is not None:
            raise ValueError("give either user_id and business_id, or pairs, not both")
        if self.pairs is None and (self.user_id is None or self.business_id is None):
            raise ValueError("give user_id and business_id, or pairs: [{user_id, business_id}, ...]")
        return self


class Showcase(BaseModel):
    """A showcase row as the API returns it: the SHOWCASES fields, and where it came from (documents the 200s for the
    OpenAPI schema; rows are returned as they are, not through this model)."""

    user_id: str
    business_id: str
    image_ids: list[str]
    image_uris: list[str]
    image_scores: list[float]
    explanation: str | None
    images_only: bool
    cold_start: bool
    candidate_score: float | None
    candidate_rank: int | None
    encoder_id: str
    dpp_model: str
    generator_model: str | None
    run_id: str
    generated_at: str
    dt: str | None
    source: Literal["fresh", "precomputed"]
    date: str | None = Field(None, description="the published date (precomputed rows only)")


class ShowcaseList(BaseModel):
    showcases: list[Showcase]


class ErrorBody(BaseModel):
    """Every 4xx and 5xx: what went wrong, the request field it is about (or null), and for pairs that cannot get a
    showcase the reason code and every failing pair."""

    error: str
    field: str | None
    reason: str | None = None
    errors: list[dict] | None = None


def answers(*statuses: int) -> dict:
    """The error statuses a route returns, for its OpenAPI responses (401 and 429 come from ``guard``, 413 from
    ``limit_body``, 503 when no model replica answers)."""
    what = {400: "malformed JSON", 401: "no or a wrong bearer token (--api-token-env)", 404: "a pair that cannot get a "
            "showcase (reason: unknown_user, unknown_business, no_photos)", 413: "too many pairs, or a body too large",
            415: "a body that is not JSON", 422: "missing, extra or wrong-typed fields; ids too long; a repeated pair",
            429: "over the rate limit (--rate-limit-per-s)", 503: "no model replica answered (retries included)"}
    return {status: {"model": ErrorBody, "description": what[status]} for status in statuses}


def error(status: int, message: str, field: str | None = None, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, "field": field, **extra}, status_code=status, headers=headers)


def field_name(loc) -> str | None:
    """("body", "pairs", 3, "user_id") -> "pairs[3].user_id"; None for the body as a whole."""
    out = ""
    for part in loc:
        if part in ("body", "path", "query") and not out:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


app = FastAPI(title="Personalized showcases", version="1")


@app.exception_handler(RequestValidationError)
async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    kind = request.headers.get("content-type", "")
    if request.method == "POST" and kind and "json" not in kind.lower():  # FastAPI reads only JSON bodies
        return error(415, f"the body must be JSON (Content-Type: application/json), got Content-Type {kind[:100]!r}")
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid").get("ctx", {}).get("error", "")
        return error(400, f"malformed JSON: {detail}".rstrip(": "))
    listed = [{"field": field_name(e.get("loc", ())), "error": str(e.get("msg", "invalid")), "type": e.get("type")}
              for e in errors]
    first = listed[0] if listed else {"field": None, "error": "invalid request"}
    return error(422, f"{first['field'] or 'body'}: {first['error']}", first["field"], errors=listed)


@app.exception_handler(StarletteHTTPException)
async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:  # unknown route, wrong method
    return error(exc.status_code, str(exc.detail))


@app.middleware("http")
async def limit_body(request: Request, call_next):
    limit = getattr(request.app.state, "max_body_bytes", 0)
    length = request.headers.get("content-length", "")
    if limit and length.isdigit() and int(length) > limit:
        return error(413, f"request body of {int(length):,} bytes is over the limit of {limit:,}", "pairs")
    if limit and not length and request.method == "POST":  # a chunked body: counted as it arrives
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return error(413, f"request body over the limit of {limit:,} bytes", "pairs")
        request._body = bytes(body)  # where Request.body() keeps a body read: the route reads it from there
    return await call_next(request)


class RateLimiter:
    """A token bucket per client: ``rate`` requests a second in bursts of up to ``burst``. The ``clients`` most recent
    clients are remembered (a bounded map: an unseen client starts with a full bucket)."""

    def __init__(self, rate: float, burst: int, clients: int = 10000):
        self.rate, self.burst, self.clients = rate, burst, clients
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, when)

    def take(self, client: str, now: float | None = None) -> float:
        """Spend one request of ``client``'s: 0 if allowed, else the seconds until it would be."""
        now = time.monotonic() if now is None else now
        tokens, when = self.buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self.buckets[client] = (tokens - 1 if wait == 0 else tokens, now)
        if len(self.buckets) > self.clients:
            self.buckets.popitem(last=False)
        return wait


def client_of(request: Request, trusted_proxies: int) -> str:
    """Who is calling: the connection's address, or behind ``trusted_proxies`` proxies the address the outermost of
    them saw (the entry that many from the right of X-Forwarded-For; entries left of it are the caller's own claims,
    never trusted). Fewer entries than proxies: the leftmost."""
    direct = request.client.host if request.client else ""
    if trusted_proxies <= 0:
        return direct
    hops = [h.strip() for value in request.headers.getlist("x-forwarded-for") for h in value.split(",") if h.strip()]
    return hops[-min(trusted_proxies, len(hops))] if hops else direct


OPEN_PATHS = ("/healthz",)  # health probes carry no token and are never rate limited


@app.middleware("http")
async def guard(request: Request, call_next):
    """The bearer token (when --api-token-env names one) and the per-client rate limit, before any route runs."""
    if request.url.path not in OPEN_PATHS:
        token = getattr(request.app.state, "api_token", "")
        if token:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                return error(401, "this API needs its bearer token: Authorization: Bearer <token>",
                             headers={"WWW-Authenticate": "Bearer"})
        limiter = getattr(request.app.state, "rate_limiter", None)
        if limiter is not None:
            wait = limiter.take(client_of(request, getattr(request.app.state, "trusted_proxies", 0)))
            if wait > 0:
                return error(429, f"over the rate limit of {limiter.rate:g} requests a second; retry in {wait:.2f} s",
                             headers={"Retry-After": str(math.ceil(wait))})
    return await call_next(request)


NOT_FOUND = {"unknown_user": "user_id", "unknown_business": "business_id", "no_photos": "business_id"}


def refused(bad: list[dict], where: str = "") -> JSONResponse:
    """The 4xx for a request some of whose pairs cannot get a showcase (check_pairs' rows for them)."""
    listed = [{**{k: v for k, v in row.items() if k != "index"},
               "field": f"{where}[{row['index']}]" if where else None} for row in bad]
    for row in listed:
        if row["reason"] in NOT_FOUND:
            row["field"] = f"{row['field']}.{NOT_FOUND[row['reason']]}" if row["field"] else NOT_FOUND[row["reason"]]
    status = 404 if all(row["reason"] in NOT_FOUND for row in listed) else 422  # else a repeated pair
    first = next(row for row in listed if status == 404 or row["reason"] not in NOT_FOUND)
    return error(status, f"{first['reason']}: {first['detail']} (user_id {first['user_id']!r}, business_id "
                 f"{first['business_id']!r})", first["field"], reason=first["reason"], errors=listed)


class ModelUnavailable(Exception):
    """No model replica answered a call, retries included."""


@app.exception_handler(ModelUnavailable)
async def unavailable(request: Request, exc: ModelUnavailable) -> JSONResponse:
    return error(503, str(exc), headers={"Retry-After": "1"})


@serve.deployment(name=MODEL)
class ShowcaseModel:
    """The models and the lookups: fresh rows for checked pairs, published rows by key, and its health."""

    def __init__(self, root: str, models: dict, options: dict):
        import torch

        from showcase_core.showcase import PublishedShowcases, ShowcaseAssembler

        self.models, self.options = models, options
        self.batching = options["batching"]
        device = "cuda" if options["num_gpus"] > 0 and torch.cuda.is_available() else "cpu"
        torch.set_num_threads(max(1, int(options["num_cpus"])))
        self.store = Store.open(root)
        self.features = self.features_checked = None
        self.refresh_features()
        self.assembler = ShowcaseAssembler(models["dpp"], models["generator"], options["k"], options["beams"], device,
                                           {key: options[key] for key in DECODING})
        self.run_id = f"serve-{new_run_id()}"
        self.published = PublishedShowcases(self.store, options["refresh_s"], options["cache_rows"]) \
            if options["precomputed"] else None
        self._assemble_batch.set_max_batch_size(options["max_batch_size"])
        self._assemble_batch.set_batch_wait_timeout_s(options["batch_wait_timeout_s"])
        self._alone = asyncio.Lock()
        self.assembled = {"calls": 0, "requests": 0, "pairs": 0, "largest_batch": 0, "seconds": 0.0}  # for /healthz

    def refresh_features(self) -> None:
        """Follow a rebuild of the feature tables (a newer _FEATURES.json), at most every refresh_s seconds."""
        from showcase_core.features import FeatureLookup, read_meta

        now = time.monotonic()
        if self.features is not None and now - self.features_checked < self.options["refresh_s"]:
            return
        self.features_checked = now
        meta = read_meta(self.store, self.models["encoder_id"])
        if self.features is None or meta["run_id"] != self.features.meta["run_id"]:
            self.features = FeatureLookup(self.store, self.models["encoder_id"], meta, self.options["cache_rows"])

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)  # set from the settings in __init__
    async def _assemble_batch(self, requests: list[list[dict]]) -> list[list[dict]]:
        """Concurrent requests' pairs (one list per request) -> their rows, with one assemble call for all."""
        rows = await self._assemble([p for request in requests for p in request], len(requests))
        out, start = [], 0
        for request in requests:
            out.append(rows[start:start + len(request)])
            start += len(request)
        return out

    async def _assemble_alone(self, pairs: list[dict]) -> list[dict]:
        async with self._alone:  # one assembly at a time, as the batched path runs one batch at a time
            return await self._assemble(pairs, 1)

    async def _assemble(self, pairs: list[dict], requests: int) -> list[dict]:
        started = time.perf_counter()
        rows = await asyncio.to_thread(self.assembler.assemble, pairs, self.run_id, utc_now())  # the loop stays free
        stats = self.assembled
        stats.update(calls=stats["calls"] + 1, requests=stats["requests"] + requests, pairs=stats["pairs"] + len(pairs),
                     largest_batch=max(stats["largest_batch"], requests),
                     seconds=round(stats["seconds"] + time.perf_counter() - started, 3))
        return rows

    def _check(self, pairs: list[dict]):
        from showcase_core.showcase import check_pairs

        self.refresh_features()
        users = self.features.rows("users", [p["user_id"] for p in pairs])
        businesses = self.features.rows("businesses", [p["business_id"] for p in pairs])
        return check_pairs(pairs, users, businesses, self.features.dim, self.assembler.max_history)

    async def fresh(self, pairs: list[dict]) -> dict:
        """{"rows": the pairs' rows, computed now} or {"refused": check_pairs' rows for those that cannot get one}."""
        good, bad = await asyncio.to_thread(self._check, pairs)
        if bad:
            return {"refused": bad}
        rows = await (self._assemble_batch(good) if self.batching else self._assemble_alone(good))
        return {"rows": [{**row, "source": "fresh"} for row in rows]}

    async def published_row(self, user_id: str, business_id: str) -> dict | None:
        """The pair's row of the newest published date, or None."""
        row = await asyncio.to_thread(self.published.get, user_id, business_id) if self.published else None
        return None if row is None else {**row, "source": "precomputed", "date": row["dt"]}

    async def health(self) -> dict:
        published = self.published
        if published:
            await asyncio.to_thread(published.refresh)
        return {"status": "ok", "models": self.models, "latest_date": published.date if published else None,
                "tables": {"showcases": published.version if published else None,
                           "features": {k: v["version"] for k, v in self.features.meta["tables"].items()},
                           "features_run_id": self.features.meta["run_id"]},
                "cache": {"published": len(published.cache) if published else 0,
                          **{k: len(v) for k, v in self.features._cache.items()}},
                "replica": serve.get_replica_context().replica_tag, "pid": os.getpid(), "settings": self.options,
                "assembled": self.assembled}


@serve.deployment(name=INGRESS)
@serve.ingress(app)
class Showcases:
    """The HTTP API: checks each request, calls the model replicas (retrying a call whose replica died) and answers."""

    def __init__(self, model, options: dict):
        self.model, self.options = model, options  # model: a DeploymentHandle to ShowcaseModel
        self.max_pairs = options["max_pairs"]
        self.calls = {"calls": 0, "retried": 0, "unavailable": 0}  # for /healthz
        # room for ids whose every character takes 12 bytes: ASCII-escaped JSON spells an astral character as two
        # six-byte surrogate escapes
        app.state.max_body_bytes = 4096 + self.max_pairs * (2 * MAX_ID_CHARS * 12 + 64)
        request = app.openapi()["components"]["schemas"]["ShowcaseRequest"]  # the served schema states the limit
        request["properties"]["pairs"]["maxItems"] = self.max_pairs
        app.state.api_token = os.environ.get(options["api_token_env"], "") if options["api_token_env"] else ""
        if options["api_token_env"] and not app.state.api_token:
            raise RuntimeError(f"the environment variable {options['api_token_env']} is not set or empty on this "
                               "replica's node (set it there, or in the runtime_env's env_vars)")
        app.state.rate_limiter = RateLimiter(options["rate_limit_per_s"], options["rate_limit_burst"]) \
            if options["rate_limit_per_s"] > 0 else None
        app.state.trusted_proxies = options["trusted_proxies"]

    async def call(self, method: str, *args):
        """The model replicas' answer to an idempotent call, sent again (to another replica: the router drops one whose
        call failed so) when the replica died with it or could not be reached, up to model_retries times."""
        retries, backoff = self.options["model_retries"], self.options["retry_backoff_s"]
        self.calls["calls"] += 1
        for attempt in range(retries + 1):
            try:
                return await getattr(self.model, method).remote(*args)
            except RayActorError as e:  # ActorDiedError, ActorUnavailableError: the replica, not the request
                if attempt == retries:
                    self.calls["unavailable"] += 1
                    raise ModelUnavailable(f"no model replica answered ({attempt + 1} tries; last: "
                                           f"{type(e).__name__}); retry shortly") from None
                self.calls["retried"] += 1
                await asyncio.sleep(backoff * 2 ** attempt)

    async def fresh(self, pairs: list[dict], where: str = "") -> list[dict] | JSONResponse:
        """Rows computed now for the pairs, or the 4xx for the pairs that cannot get one (all or nothing)."""
        answer = await self.call("fresh", pairs)
        return refused(answer["refused"], where) if "refused" in answer else answer["rows"]

    @app.post("/v1/showcases", responses={200: {"model": Showcase | ShowcaseList,
                                                "description": "one showcase, or {showcases: [...]} for pairs"},
                                          **answers(400, 401, 404, 413, 415, 422, 429, 503)})
    async def create(self, body: ShowcaseRequest):
        if body.pairs is None:
            rows = await self.fresh([{"user_id": body.user_id, "business_id": body.business_id}])
            return rows if isinstance(rows, JSONResponse) else rows[0]
        if len(body.pairs) > self.max_pairs:
            return error(413, f"{len(body.pairs)} pairs in one request; at most {self.max_pairs}", "pairs")
        rows = await self.fresh([p.model_dump() for p in body.pairs], "pairs")
        return rows if isinstance(rows, JSONResponse) else {"showcases": rows}

    @app.get("/v1/showcases/{user_id}/{business_id}", responses={200: {"model": Showcase, "description": "the "
                                                                   "published row, else one computed now"},
                                                               **answers(401, 404, 413, 422, 429, 503)})
    async def lookup(self, user_id: Annotated[str, Path(max_length=MAX_ID_CHARS)],
                     business_id: Annotated[str, Path(max_length=MAX_ID_CHARS)]):
        row = await self.call("published_row", user_id, business_id)
        if row is not None:
            return row
        rows = await self.fresh([{"user_id": user_id, "business_id": business_id}])
        return rows if isinstance(rows, JSONResponse) else rows[0]

    @app.get("/healthz", responses=answers(503))
    async def healthz(self):
        model = await self.call("health")  # one model replica's view (each has its own caches and counts)
        context = serve.get_replica_context()
        return {**model, "settings": {**model["settings"], **self.options},
                "ingress": {"replica": context.replica_tag, "pid": os.getpid(), **self.calls}}


# -- python -m jobs.serve -----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    cfg = parse_args("serve", Settings, argv)
    application = app_for(cfg)  # ROOT and models checked before anything starts
    if not os.environ.get("RAY_ADDRESS"):  # a local Ray: it cannot grow, so check what the replicas need now
        import torch

        replicas = max(cfg.min_replicas, 1)
        cpus = replicas * cfg.num_cpus + cfg.ingress_replicas * cfg.ingress_num_cpus
        if cpus > (os.cpu_count() or 1):
            raise UserError(f"{replicas} model replica(s) x --num-cpus {cfg.num_cpus:g} and {cfg.ingress_replicas} "
                            f"ingress replica(s) x --ingress-num-cpus {cfg.ingress_num_cpus:g} need {cpus:g} CPU, this "
                            f"machine has {os.cpu_count()}")
        if cfg.num_gpus * replicas > torch.cuda.device_count():
            raise UserError(f"{replicas} model replica(s) x --num-gpus {cfg.num_gpus:g} need "
                            f"{cfg.num_gpus * replicas:g} GPU, this machine has {torch.cuda.device_count()}")
        with socket.socket() as s:
            try:
                s.bind((cfg.host, cfg.port))
            except OSError as e:
                raise UserError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror}") from None
    start_ray(state_api=True)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(application, name=APP_NAME, route_prefix="/", blocking=False)  # returns once the replicas are up
    print(f"[serve] showcases at http://{cfg.host}:{cfg.port}/v1/showcases (health: /healthz); Ctrl-C stops",
          flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` and Ctrl-C both stop Serve cleanly
    try:
        while True:  # what serve.run(blocking=True) does, with the URL printed once the app answers
            time.sleep(10)
    except KeyboardInterrupt:
        serve.shutdown()
        print("[serve] stopped", flush=True)
    return 0


if __name__ == "__main__":
    exit_process(run("serve", main))
