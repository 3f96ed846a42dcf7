"""A locust load for jobs.serve: exactly N fresh single-pair POSTs, then the run ends. Run headless, as a subprocess:

  SHOWCASE_LOAD_PAIRS=pairs.json SHOWCASE_LOAD_REQUESTS=2000 SHOWCASE_LOAD_REPORT=report.json \\
  locust -f tests/serve_locustfile.py --headless -u 64 -r 64 --host http://127.0.0.1:8000 --only-summary

``pairs.json`` is a JSON list of [user_id, business_id], taken in turn. Each user takes a ticket before each request and
stops when none is left; the user that gets the N-th answer ends the run, so exactly N requests are made and every one
is answered. A success is a 200 whose business_id is the one asked; anything else is a failure named by its status.
When the run ends, ``report.json`` gets the final figures: requests, failures (by message), p50/p99 in ms, requests/s
(locust's CSV files are written once a second, so they may miss the last second).
"""

import json
import os

import gevent
from locust import FastHttpUser, constant, events, task
from locust.exception import StopUser

with open(os.environ["SHOWCASE_LOAD_PAIRS"]) as f:
    PAIRS = json.load(f)
REQUESTS = int(os.environ["SHOWCASE_LOAD_REQUESTS"])
issued = answered = 0


@events.quitting.add_listener
def write_report(environment, **_):
    total = environment.runner.stats.total
    report = {"requests": total.num_requests, "failed": total.num_failures,
              "failures": {e.error: e.occurrences for e in environment.runner.stats.errors.values()},
              "p50_ms": total.get_response_time_percentile(0.5), "p99_ms": total.get_response_time_percentile(0.99),
              "rps": total.total_rps}
    with open(os.environ["SHOWCASE_LOAD_REPORT"], "w") as f:
        json.dump(report, f)


class ShowcaseClient(FastHttpUser):
    wait_time = constant(0)
    network_timeout = connection_timeout = 120.0

    @task
    def fresh_showcase(self):
        global issued, answered
        if issued >= REQUESTS:
            raise StopUser()
        user_id, business_id = PAIRS[issued % len(PAIRS)]
        issued += 1
        with self.client.post("/v1/showcases", json={"user_id": user_id, "business_id": business_id},
                              name="POST /v1/showcases", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {(response.text or '')[:200]}")
            elif response.json().get("business_id") != business_id:
                response.failure(f"status 200 for another business: {response.text[:200]}")
        answered += 1
        if answered == REQUESTS:
            gevent.spawn(self.environment.runner.quit)  # every request is answered: the run is over
            raise StopUser()
