"""cluster/: the launcher YAML against Ray's own schema, the KubeRay manifests, one config per job, and a real
``ray job submit`` of jobs.ingest to a local ``ray start --head`` cluster on 127.0.0.1."""

import contextlib
import copy
import glob
import importlib
import importlib.util
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass

import psutil
import pytest
import yaml

from jobs import harness
from jobs.common import parse_args
from showcase_core.store import Store

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLUSTER = os.path.join(REPO, "cluster")
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
GPU = "nvidia.com/gpu"
FUTURE_STAGES = {"train_pc2l", "nightly", "serve"}  # announced by their issues (some may be built by now)
PER_RUN = {"nightly": ["--candidates", "s3://bucket/candidates/", "--date", "2026-01-31"],
           "recommend": ["--date", "2026-01-31"]}
LOCAL_ONLY = {"make_world", "demo"}  # stages that only make sense on one machine: no cluster config
with open(os.path.join(CLUSTER, "kuberay", "Dockerfile")) as _f:  # where the image puts the checkout
    IMAGE_WORKDIR = re.search(r"^WORKDIR (\S+)", _f.read(), re.M).group(1)


def load(path: str):
    with open(path) as f:
        return yaml.safe_load(f)


def stage_exists(stage: str) -> bool:
    return importlib.util.find_spec(f"jobs.{stage}") is not None


def manifests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(glob.glob(os.path.join(CLUSTER, "kuberay", "*.yaml"))):
        with open(path) as f:
            out += [(os.path.basename(path), doc) for doc in yaml.safe_load_all(f) if doc is not None]
    return out


def of_kind(kind: str) -> list[tuple[str, dict]]:
    return [(name, doc) for name, doc in manifests() if doc["kind"] == kind]


def job_specs() -> list[tuple[str, dict]]:
    """(file, RayJob spec) of every RayJob and of every RayCronJob's job template."""
    return ([(name, doc["spec"]) for name, doc in of_kind("RayJob")]
            + [(name, doc["spec"]["jobTemplate"]) for name, doc in of_kind("RayCronJob")])


def stage_of(command: str) -> tuple[str, dict]:
    """(stage, {--option: value}) of a ``python -m jobs.<stage> --key value ...`` command line."""
    tokens = shlex.split(command)
    i = tokens.index("-m")
    assert tokens[i - 1] == "python" and tokens[i + 1].startswith("jobs."), command
    options = {tokens[j]: tokens[j + 1] for j in range(i + 2, len(tokens) - 1) if tokens[j].startswith("--")}
    return tokens[i + 1][len("jobs."):], options


def gpus_of(group: dict) -> int:
    """nvidia.com/gpu of a group's pod; requests must equal limits (KubeRay reads the GPU count from limits)."""
    [container] = [c for c in group["template"]["spec"]["containers"] if c["name"].startswith("ray-")]
    resources = container.get("resources", {})
    requested = resources.get("requests", {}).get(GPU, 0)
    assert requested == resources.get("limits", {}).get(GPU, 0), f"{GPU} requests != limits in {group}"
    return int(requested)


# -- the cluster launcher YAML ------------------------------------------------------------------------

def test_launcher_yaml_validates_against_rays_autoscaler_schema():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")) as f:
        schema = json.load(f)
    config = load(os.path.join(CLUSTER, "aws.yaml"))
    jsonschema.validate(config, schema)
    validate_config(prepare_config(copy.deepcopy(config)))  # with Ray's AWS defaults filled in, as `ray up` does
    # the schema is strict, so the check above is worth something: a misspelt key is an error
    typo = copy.deepcopy(config)
    typo["available_node_types"]["gpu"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, schema)


def test_launcher_scales_from_zero_on_spot_with_instance_roles():
    config = load(os.path.join(CLUSTER, "aws.yaml"))
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert "InstanceMarketOptions" not in head["node_config"]  # the head is on-demand: losing it loses the cluster
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    families = {name: t["node_config"]["InstanceType"][0] for name, t in workers.items()}
    assert "g" in families.values() or "p" in families.values(), "a GPU worker type (g*/p* instances)"
    assert set(families.values()) - {"g", "p"}, "a CPU worker type for decoding"
    for name, node_type in types.items():
        profile = node_type["node_config"]["IamInstanceProfile"]
        assert profile.get("Arn") or profile.get("Name"), f"{name}: S3 through an instance role"
    for name, node_type in workers.items():
        assert node_type["min_workers"] == 0 and node_type["max_workers"] > 0, name
        assert node_type["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot", name
    # the checkout is synced to the nodes: never the virtualenv, git history or demo data
    assert config["file_mounts"] and set(config["file_mounts"].values()) == {"."}
    assert {".venv", ".git", ".demo*"} <= set(config["rsync_exclude"])


def test_no_credentials_in_cluster_files():
    key_id = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
    assignment = re.compile(r"(?i)(aws_secret_access_key|aws_session_token|aws_access_key_id)\s*[:=]\s*\S")
    paths = [p for p in glob.glob(os.path.join(CLUSTER, "**", "*"), recursive=True) if os.path.isfile(p)]
    assert len(paths) >= 10
    for path in paths:
        with open(path) as f:
            text = f.read()
        assert not key_id.search(text) and not assignment.search(text), path
    for name, doc in manifests():
        for container in _containers(doc):
            names = {e["name"] for e in container.get("env", [])}
            assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}, name


# -- the runtime environment ----------------------------------------------------------------------------

def test_runtime_env_uploads_the_code_and_nothing_else():
    from ray._private.thirdparty.pathspec import PathSpec  # the matcher Ray applies to `excludes`

    env = load(os.path.join(CLUSTER, "runtime_env.yaml"))
    assert env["working_dir"] == "."
    spec = PathSpec.from_lines("gitwildmatch", env["excludes"])
    for left_out in (".venv/bin/python", ".git/HEAD", ".demo/tables/_CURRENT.json", ".demo-world/images/a.jpg",
                     "checkpoints/train_clip/x/state.pt", "jobs/__pycache__/common.cpython-311.pyc",
                     "personalized_showcases.egg-info/PKG-INFO"):
        assert spec.match_file(left_out), left_out
    for kept in ("jobs/ingest.py", "showcase_core/store.py", "cluster/configs/embed.yaml",
                 "cluster/deepspeed/gpu_zero2_bf16.json", "pyproject.toml"):
        assert not spec.match_file(kept), kept
    assert all(isinstance(v, str) for v in env["env_vars"].values())  # Ray requires strings


def test_kuberay_jobs_use_the_same_runtime_env_with_the_checkout_in_the_image():
    env = load(os.path.join(CLUSTER, "runtime_env.yaml"))
    with open(os.path.join(CLUSTER, "kuberay", "Dockerfile")) as f:
        dockerfile = f.read()
    assert f"WORKDIR {IMAGE_WORKDIR}" in dockerfile and f" . {IMAGE_WORKDIR}" in dockerfile
    for name, spec in job_specs():
        theirs = yaml.safe_load(spec["runtimeEnvYAML"])
        assert theirs == {**env, "working_dir": IMAGE_WORKDIR}, name


# -- the KubeRay manifests -------------------------------------------------------------------------------

def _pod_specs(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    cluster = spec.get("jobTemplate", spec).get("rayClusterSpec")
    if cluster is None:
        return []
    return [g["template"]["spec"] for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]]


def _containers(doc: dict) -> list[dict]:
    return [c for pod in _pod_specs(doc) for c in pod["containers"]]


def check_cluster_spec(where: str, cluster: dict, ray_version: str) -> None:
    assert cluster["rayVersion"] == ray_version, where
    assert cluster["enableInTreeAutoscaling"] is True, where
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict), where
    assert head["template"]["spec"]["containers"][0]["image"], where
    assert gpus_of(head) == 0, f"{where}: the head needs no GPU"
    groups = cluster["workerGroupSpecs"]
    assert groups and len({g["groupName"] for g in groups}) == len(groups), where
    for group in groups:
        assert 0 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"], where
        assert group["template"]["spec"]["containers"][0]["image"], where
        assert isinstance(group["rayStartParams"], dict), where
        if "gpu" in group["groupName"]:
            assert gpus_of(group) >= 1, f"{where}: group {group['groupName']} requests no {GPU}"
        else:
            assert gpus_of(group) == 0, where
    assert any("gpu" in g["groupName"] for g in groups), f"{where}: no GPU worker group"


def ray_version_of_image() -> str:
    with open(os.path.join(CLUSTER, "kuberay", "Dockerfile")) as f:
        return re.search(r"^FROM rayproject/ray:([0-9.]+)-", f.read(), re.M).group(1)


def test_kuberay_manifests_carry_what_kuberay_requires():
    docs = manifests()
    assert docs
    ray_version = ray_version_of_image()
    assert all(image.startswith(f"rayproject/ray:{ray_version}-") for image in (
        load(os.path.join(CLUSTER, "aws.yaml"))["docker"]["image"],
        load(os.path.join(CLUSTER, "aws.yaml"))["docker"]["head_image"]))
    [(_, account)] = of_kind("ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    for name, doc in docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], name
        if doc["kind"] in ("RayJob", "RayCronJob", "RayService"):
            assert doc["apiVersion"] == "ray.io/v1", name
            assert all(pod["serviceAccountName"] == account["metadata"]["name"] for pod in _pod_specs(doc)), name
    for name, spec in job_specs():
        assert spec["entrypoint"].strip(), name
        assert spec["shutdownAfterJobFinishes"] is True, name
        check_cluster_spec(name, spec["rayClusterSpec"], ray_version)
    [(name, cron)] = of_kind("RayCronJob")
    fields = cron["spec"]["schedule"].split()
    assert len(fields) == 5 and all(re.fullmatch(r"(\*|\d+(-\d+)?)(/\d+)?(,(\d+(-\d+)?))*", f) for f in fields), name
    assert set(cron["spec"]) == {"schedule", "jobTemplate"}  # the RayCronJob CRD of KubeRay 1.6 has no other fields
    [(name, service)] = of_kind("RayService")
    check_cluster_spec(name, service["spec"]["rayClusterSpec"], ray_version)
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert serve_config["applications"], name
    for app in serve_config["applications"]:
        assert app["import_path"] and app["route_prefix"].startswith("/"), name
        for deployment in app["deployments"]:
            if "autoscaling_config" not in deployment:  # a fixed number of replicas
                assert deployment["num_replicas"] >= 1, name
                continue
            autoscaling = deployment["autoscaling_config"]
            assert 1 <= autoscaling["min_replicas"] <= autoscaling["max_replicas"], name
            assert autoscaling["target_ongoing_requests"] > 0, name
    # what runs where: the nightly on a schedule, embed and training as jobs, serve as a service
    stages = {name: stage_of(spec["entrypoint"])[0] for name, spec in job_specs()}
    assert sorted(stages[n] for n, _ in of_kind("RayJob")) == ["embed", "train_dpp", "train_pc2l"]
    assert [stages[n] for n, _ in of_kind("RayCronJob")] == ["nightly"]
    assert serve_config["applications"][0]["import_path"].split(":")[0] == "jobs.serve"


def test_every_entrypoint_names_a_stage_and_its_config():
    commands = [(name, spec["entrypoint"]) for name, spec in job_specs()]
    with open(os.path.join(REPO, "README.md")) as f:
        blocks = re.findall(r"^```bash\n(.*?)^```", f.read(), re.M | re.S)  # the README's shell lines
    commands += [("README.md", line[line.index("python -m jobs."):])
                 for block in blocks for line in block.splitlines() if "python -m jobs." in line]
    assert len(commands) >= 12
    for where, command in commands:
        stage, options = stage_of(command)
        assert stage_exists(stage) or stage in FUTURE_STAGES, f"{where}: jobs.{stage}"
        if "--config" in options:
            assert options["--config"] == f"cluster/configs/{stage}.yaml", where
            assert os.path.isfile(os.path.join(REPO, options["--config"])), where
    [(name, service)] = of_kind("RayService")
    for app in yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]:
        module = app["import_path"].split(":")[0]
        assert module.startswith("jobs.") and (stage_exists(module[5:]) or module[5:] in FUTURE_STAGES), name
        config = app["args"]["config"]
        assert config.startswith(IMAGE_WORKDIR + "/") and os.path.isfile(os.path.join(REPO, config[len(IMAGE_WORKDIR) + 1:]))


def test_gpu_groups_can_hold_what_each_job_asks_for():
    for name, spec in job_specs():
        stage, options = stage_of(spec["entrypoint"])
        settings = load(os.path.join(REPO, options["--config"]))
        gpus = sum(g["maxReplicas"] * gpus_of(g) for g in spec["rayClusterSpec"]["workerGroupSpecs"])
        if settings.get("use_gpu"):  # Ray Train workers (train_*) or model actors (embed, distill, nightly), 1 GPU each
            asked = settings["num_workers"] if "num_workers" in settings else settings["actors"]
            assert 1 <= asked <= gpus, f"{name}: {asked} GPU workers or actors, {gpus} GPUs"
    [(name, service)] = of_kind("RayService")
    serve = load(os.path.join(CLUSTER, "configs", "serve.yaml"))
    [app] = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == {"Showcases", "ShowcaseModel"}, name  # jobs.serve's INGRESS and MODEL
    model, ingress = deployments["ShowcaseModel"], deployments["Showcases"]
    assert model["autoscaling_config"] == {k: serve[k] for k in ("min_replicas", "max_replicas",
                                                                 "target_ongoing_requests")}
    assert serve["min_replicas"] >= 2  # losing a model replica fails no request only where another is up
    assert model["ray_actor_options"] == {"num_cpus": serve["num_cpus"], "num_gpus": serve["num_gpus"]}
    assert model["max_ongoing_requests"] == serve["max_ongoing_requests"]
    assert ingress["num_replicas"] == serve["ingress_replicas"] >= 2
    assert ingress["max_ongoing_requests"] == serve["ingress_max_ongoing_requests"]
    assert ingress["ray_actor_options"] == {"num_cpus": serve["ingress_num_cpus"]}
    gpus = sum(g["maxReplicas"] * gpus_of(g) for g in service["spec"]["rayClusterSpec"]["workerGroupSpecs"])
    assert gpus >= serve["max_replicas"] * serve["num_gpus"], name


# -- one config per job ---------------------------------------------------------------------------------

def config_paths() -> list[str]:
    return sorted(glob.glob(os.path.join(CLUSTER, "configs", "*.yaml")))


def test_every_job_has_a_config():
    from jobs.cli import STAGES

    jobs = (set(STAGES) - LOCAL_ONLY) | FUTURE_STAGES
    assert {"ingest", "train_clip", "embed", "train_dpp", "evaluate"} <= jobs
    assert jobs <= {os.path.basename(p)[:-5] for p in config_paths()}


@pytest.mark.parametrize("path", config_paths(), ids=os.path.basename)
def test_config_is_accepted_by_its_job(path, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # relative paths in a config (deepspeed_config) are relative to the job's working_dir
    stage = os.path.basename(path)[:-5]
    from_file = load(path)
    assert isinstance(from_file, dict) and from_file, path
    assert "root" not in from_file  # ROOT is per environment: given on the command line
    if stage_exists(stage):
        module = importlib.import_module(f"jobs.{stage}")
        per_run = PER_RUN.get(stage, [])  # what a run gives on its command line (a RayCronJob: the date)
        settings = parse_args(stage, module.Settings, ["--root", str(tmp_path), "--config", path, *per_run])
        for key, value in from_file.items():
            assert getattr(settings, key) == value, key  # the declaration's type, the file's value
    else:  # not built yet: settings named as the jobs name theirs, the harness's valid for the harness
        assert stage in FUTURE_STAGES, f"{path}: no jobs.{stage} and not an announced stage"
        assert all(re.fullmatch(r"[a-z][a-z0-9_]*", key) for key in from_file), path
        shared = {k: v for k, v in from_file.items() if k in harness.TrainingSettings.model_fields}
        harness.TrainingSettings.model_validate({"root": str(tmp_path), **shared})
    if from_file.get("deepspeed_config"):  # DeepSpeed's batch per GPU is the job's batch per worker
        with open(from_file["deepspeed_config"]) as f:
            assert json.load(f)["train_micro_batch_size_per_gpu"] == from_file["batch_size"], path


# -- a real `ray job submit` to a local cluster --------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Head:
    address: str  # the job server, http://127.0.0.1:<port>
    env: dict  # the environment for Ray CLI commands against it (its auth token; RAY_ADDRESS is not in it)
    temp_dir: str
    token: str
    process: subprocess.Popen  # `ray start --block`


def _processes_of(temp_dir: str, start: psutil.Process | None) -> dict[int, psutil.Process]:
    """Every process of the cluster: named by its temp dir on the command line, or descended from one of those."""
    found = {}
    if start is not None:
        found[start.pid] = start
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid != os.getpid() and any(temp_dir in arg for arg in proc.info["cmdline"] or []):
            found[proc.pid] = proc
    for proc in list(found.values()):
        with contextlib.suppress(psutil.Error):
            found.update({child.pid: child for child in proc.children(recursive=True)})
    found.pop(os.getpid(), None)
    return found


def _stop(start: subprocess.Popen, temp_dir: str) -> None:
    """Stop this cluster only: ``ray stop`` would stop every Ray instance on the machine, other tests' included. Every
    process of it at once (``ray start --block`` on SIGTERM stops its processes one after another: 2 s when idle, ~30 s
    after the training jobs of test_run_logs), killed if still there after 2 s."""
    try:
        procs = _processes_of(temp_dir, psutil.Process(start.pid))
    except psutil.NoSuchProcess:
        procs = _processes_of(temp_dir, None)
    for proc in procs.values():
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(list(procs.values()), timeout=2)
    procs = {p.pid: p for p in alive} | _processes_of(temp_dir, None)  # and any started meanwhile
    for proc in procs.values():
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(list(procs.values()), timeout=5)
    start.wait(timeout=5)


@pytest.fixture
def head_node(tmp_path):
    """``ray start --head`` on free 127.0.0.1 ports with its own temp dir and auth token; stopped afterwards. A head
    that times out registering its raylet (Ray waits 30 s, which a machine loaded by other work can exceed) is
    started once more, on new ports."""
    for attempt in (1, 2):
        head, start = _start_head(tmp_path / f"ray-start-{attempt}.log")
        if head is not None:
            break
        assert attempt == 1 and "timed out during startup" in start, start
    try:
        yield head
    finally:
        _stop(head.process, head.temp_dir)
        shutil.rmtree(head.temp_dir, ignore_errors=True)


def _start_head(log_path) -> tuple[Head | None, str]:
    """(the running head, "") or (None, why it exited) when ``ray start`` exits before the head is up."""
    temp_dir = tempfile.mkdtemp(prefix="rc-")  # short, not under tmp_path: Ray's socket paths have a length limit
    token = secrets.token_hex(32)
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    ports = {name: free_port() for name in ("port", "dashboard-port", "ray-client-server-port", "node-manager-port",
                                            "object-manager-port", "dashboard-agent-listen-port",
                                            "dashboard-agent-grpc-port", "runtime-env-agent-port",
                                            "metrics-export-port")}
    with open(log_path, "w") as log:
        start = subprocess.Popen(
            [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", "--num-cpus=2", "--num-gpus=0", f"--temp-dir={temp_dir}",
             "--disable-usage-stats", *(f"--{name}={port}" for name, port in ports.items())],
            env=env, stdout=log, stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.monotonic() + 120  # a loaded 2-core machine takes 15-40 s
        while True:
            if start.poll() is not None:
                _stop(start, temp_dir)
                shutil.rmtree(temp_dir, ignore_errors=True)
                return None, f"ray start exited {start.returncode}:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the head did not come up:\n{log_path.read_text()[-3000:]}"
            if "Ray runtime started" in log_path.read_text():
                try:
                    request = urllib.request.Request(f"{address}/api/version",
                                                     headers={"Authorization": f"Bearer {token}"})
                    with urllib.request.urlopen(request, timeout=5) as response:
                        if response.status == 200:
                            return Head(address, env, temp_dir, token, start), ""
                except OSError:
                    pass
            time.sleep(0.5)
    except BaseException:
        _stop(start, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise


def test_ray_job_submit_runs_ingest_on_a_local_cluster(head_node, tiny_world, tmp_path):
    world, summary = tiny_world
    root = str(tmp_path / "root")
    submission_id = f"ingest-{uuid.uuid4().hex[:8]}"
    result = subprocess.run(
        [RAY, "job", "submit", "--runtime-env", "cluster/runtime_env.yaml", "--submission-id", submission_id,
         "--", "python", "-m", "jobs.ingest", "--root", root, "--config", "cluster/configs/ingest.yaml",
         "--gest", f"{world}/filter_all_t.json"],
        cwd=REPO, env={**head_node.env, "RAY_ADDRESS": head_node.address}, capture_output=True, text=True,
        timeout=150)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert f"Job '{submission_id}' succeeded" in output, output[-4000:]
    # the job's own summary table, streamed back by `ray job submit`
    assert f"| {summary['photos']} | {summary['reviews']} | {summary['users']} |" in output, output[-4000:]

    # the job ran on that cluster: its driver connected to it (not to a Ray instance of its own), in the uploaded code
    request = urllib.request.Request(f"{head_node.address}/api/jobs/{submission_id}",
                                     headers={"Authorization": f"Bearer {head_node.token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        job = json.load(response)
    assert job["status"] == "SUCCEEDED" and job["driver_exit_code"] == 0
    assert job["driver_info"] and job["driver_info"]["id"] == job["job_id"]
    assert job["runtime_env"]["working_dir"].startswith("gcs://")
    [package] = {os.path.realpath(p) for p in glob.glob(os.path.join(  # session_latest links to the session
        head_node.temp_dir, "session_*", "runtime_resources", "working_dir_files", "_ray_pkg_*")) if os.path.isdir(p)}
    uploaded = set(os.listdir(package))
    assert {"jobs", "showcase_core", "cluster", "pyproject.toml"} <= uploaded
    assert not uploaded & {".venv", ".git", ".demo", ".demo-world"}, uploaded

    # and its output is right: the tables and the run report in ROOT
    store = Store.open(root)
    assert store.read_table("reviews").num_rows == summary["reviews"]
    assert store.read_table("images").num_rows == summary["photos"]
    reasons = sorted(store.read_table("quarantine").column("reason").to_pylist())
    assert reasons == sorted(e["reason"] for e in summary["planted_bad"])
    [report_file] = glob.glob(os.path.join(root, "reports", "ingest", "*.json"))
    with open(report_file) as f:
        report = json.load(f)
    assert report["counts"]["records_in"] == summary["reviews"] + len(summary["planted_bad"])
    assert report["counts"]["reviews_out"] == summary["reviews"]
    assert report["settings"]["chunk_mb"] == 64.0 and report["inputs"]["format"] == "s2"
