"""Serve's guard, in front of every route: the bearer token and the per-client rate limit (the real FastAPI app, no
Ray: a request the guard lets through reaches FastAPI's routing, which answers an unknown path 404)."""

import pytest
from fastapi.testclient import TestClient

from jobs import serve


@pytest.fixture
def client():
    state = serve.app.state
    yield TestClient(serve.app, raise_server_exceptions=False)  # /healthz runs, and fails outside a replica
    state.api_token, state.rate_limiter, state.trusted_proxies = "", None, 0


def test_the_bearer_token_is_required_and_compared_whole(client):
    serve.app.state.api_token = "s3cret-token"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer s3cret"},
                    {"Authorization": "Basic s3cret-token"}, {"Authorization": "s3cret-token"}):
        response = client.get("/v1/nothing-here", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer" and "bearer token" in response.json()["error"]
    assert client.get("/v1/nothing-here", headers={"Authorization": "Bearer s3cret-token"}).status_code == 404
    assert client.get("/v1/nothing-here", headers={"authorization": "bearer  s3cret-token "}).status_code == 404
    assert client.get("/healthz").status_code != 401  # health probes carry no token


def test_without_a_token_setting_nothing_is_asked(client):
    assert client.get("/v1/nothing-here").status_code == 404


def test_a_client_over_the_rate_gets_429_with_retry_after(client):
    serve.app.state.rate_limiter = serve.RateLimiter(rate=0.5, burst=3)
    codes = [client.get("/v1/nothing-here").status_code for _ in range(5)]
    assert codes == [404, 404, 404, 429, 429]
    limited = client.get("/v1/nothing-here")
    assert limited.headers["retry-after"] == "2" and "rate limit" in limited.json()["error"]
    assert client.get("/healthz").status_code != 429


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket(client):
    serve.app.state.rate_limiter = serve.RateLimiter(rate=0.5, burst=1)

    def code(forwarded: str) -> int:
        return client.get("/v1/nothing-here", headers={"X-Forwarded-For": forwarded}).status_code

    assert [code("203.0.113.7"), code("203.0.113.7")] == [404, 429]  # no proxy trusted: one bucket, the balancer's
    serve.app.state.rate_limiter = serve.RateLimiter(rate=0.5, burst=1)
    serve.app.state.trusted_proxies = 1
    assert [code("203.0.113.7"), code("203.0.113.8"), code("203.0.113.7")] == [404, 404, 429]
    # what a caller writes itself (left of the proxy's entry) cannot buy it a fresh bucket
    assert code("198.51.100.1, 203.0.113.8") == 429 and code("forged, 203.0.113.7") == 429


def test_the_client_is_read_from_the_right_of_x_forwarded_for():
    from starlette.requests import Request

    def request(*forwarded: str) -> Request:
        return Request({"type": "http", "client": ("10.0.0.9", 5000),
                        "headers": [(b"x-forwarded-for", f.encode()) for f in forwarded]})

    assert serve.client_of(request("1.1.1.1, 2.2.2.2"), 0) == "10.0.0.9"
    assert serve.client_of(request("1.1.1.1, 2.2.2.2"), 1) == "2.2.2.2"
    assert serve.client_of(request("1.1.1.1", "2.2.2.2, 3.3.3.3"), 2) == "2.2.2.2"  # repeated headers: one list
    assert serve.client_of(request("1.1.1.1"), 3) == "1.1.1.1"
    assert serve.client_of(request(), 1) == "10.0.0.9"


def test_the_token_bucket_refills_at_its_rate_and_forgets_old_clients():
    limiter = serve.RateLimiter(rate=2.0, burst=2, clients=2)
    assert [limiter.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert limiter.take("a", now=0.5) == 0.0  # one token back after 1/rate seconds
    assert limiter.take("a", now=0.5) == pytest.approx(0.5)
    limiter.take("b", now=0.5)
    limiter.take("c", now=0.5)  # a third client: the least recent one ("a") is forgotten
    assert "a" not in limiter.buckets and limiter.take("a", now=0.5) == 0.0


def test_a_token_variable_that_is_not_set_is_a_settings_error(monkeypatch, tmp_path):
    monkeypatch.delenv("SHOWCASE_NO_SUCH_TOKEN", raising=False)
    with pytest.raises(ValueError, match="SHOWCASE_NO_SUCH_TOKEN is not set"):
        serve.Settings(root=str(tmp_path), api_token_env="SHOWCASE_NO_SUCH_TOKEN")
    monkeypatch.setenv("SHOWCASE_NO_SUCH_TOKEN", "t")
    assert serve.Settings(root=str(tmp_path), api_token_env="SHOWCASE_NO_SUCH_TOKEN").api_token_env


def test_the_documented_row_has_the_showcases_fields():
    from showcase_core.data.schema import SHOWCASES

    assert set(serve.Showcase.model_fields) == set(SHOWCASES.names) | {"source", "date"}
