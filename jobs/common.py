"""What every job shares: arguments and config, exit codes, run reports, Ray start-up, progress lines.

Contract (ARCHITECTURE.md): ``python -m jobs.<stage> --root ROOT [--config FILE.yaml] [--key value ...]``.
Settings come from the job's defaults, then the YAML file, then the command line. Exit 0 on success;
exit 2 with one line on bad input or config (before expensive work); 3 when another run committed the same output
first (nothing of this run is visible); 1 on anything else.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
import traceback
from typing import Callable

import yaml

from showcase_core import __version__
from showcase_core.store import Store, StoreError, new_run_id, utc_now
from showcase_core.tables import LostRace


class UserError(Exception):
    """A mistake in the job's input or config: reported as one line, exit 2."""


def _coerce(stage: str, key: str, raw, default):
    if default is None or isinstance(raw, type(default)) and not isinstance(raw, str):
        return raw
    try:
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        return type(default)(raw)
    except (TypeError, ValueError):
        raise UserError(f"--{key.replace('_', '-')}: expected {type(default).__name__}, got {raw!r}") from None


def parse_args(stage: str, defaults: dict, argv: list[str] | None) -> dict:
    """Merge defaults < --config YAML < --key value pairs. ``root`` is required unless the default has it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(f"usage: showcase {stage} --root ROOT [--config FILE.yaml] " +
              " ".join(f"[--{k.replace('_', '-')} {type(v).__name__.upper() if v is not None else 'VALUE'}]"
                       for k, v in defaults.items() if k != "root"))
        raise SystemExit(0)
    cli: dict = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or token == "--":
            raise UserError(f"unexpected argument {token!r} (options look like --key value)")
        key, _, value = token[2:].partition("=")
        key = key.replace("-", "_")
        if not value:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
                i += 1
            else:
                value = "true"  # a bare flag
        cli[key] = value
        i += 1
    settings = dict(defaults)
    if "config" in cli:
        path = cli.pop("config")
        try:
            with open(path) as f:
                from_file = yaml.safe_load(f) or {}
        except OSError as e:
            raise UserError(f"--config: cannot read {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise UserError(f"--config: {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(from_file, dict):
            raise UserError(f"--config: {path} must hold a mapping of settings")
        _merge(stage, settings, defaults, {k.replace("-", "_"): v for k, v in from_file.items()}, f"in {path}")
    _merge(stage, settings, defaults, cli, "")
    if not settings.get("root"):
        raise UserError("--root is required (a local path, file:// or s3:// URI)")
    return settings


def _merge(stage: str, settings: dict, defaults: dict, new: dict, where: str) -> None:
    for key, value in new.items():
        if key not in defaults:
            known = ", ".join("--" + k.replace("_", "-") for k in defaults)
            raise UserError(f"unknown setting --{key.replace('_', '-')} {where} for {stage} (known: {known})".replace("  ", " "))
        settings[key] = _coerce(stage, key, value, defaults[key])


def open_store(root: str, writable: bool = True) -> Store:
    """Open ROOT and make sure it can be written (or, for a reading role, read), failing fast with one line."""
    try:
        store = Store.open(root, fail_fast=True)
        store.check_writable() if writable else store.check_readable()
        store.check_layout()
    except StoreError as e:
        raise UserError(str(e)) from None
    return Store.open(root)  # the same ROOT with normal timeouts and retries for the real work


def start_ray() -> None:
    """Join the cluster the job was submitted to (RAY_ADDRESS), or start a local Ray instance."""
    import ray

    if ray.is_initialized():
        return
    ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
             log_to_driver=True, logging_level="WARNING")


def actor_plan(use_gpu: bool, actors: int, cpu_actors_default: int = 1) -> tuple[int, dict, str]:
    """(actor count, resources per actor, torch device) for a job's model actor pool.

    GPUs when the cluster has them now, or when ``use_gpu`` asks for them: an autoscaling cluster that starts from
    zero GPU nodes shows none until an actor requests one, so jobs meant for GPUs set ``use_gpu`` to get them.
    """
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if use_gpu or gpus:
        return actors or max(1, gpus), {"num_gpus": 1}, "cuda"
    return actors or cpu_actors_default, {"num_cpus": 1}, "cpu"


def resolve_encoder_id(store: Store, encoder: str) -> str:
    """``latest`` -> the encoder of the newest trained CLIP (models/clip/_LATEST.json); otherwise the id given."""
    if encoder == "latest":
        try:
            return store.read_json("models/clip/_LATEST.json")["encoder_id"]
        except StoreError:
            raise UserError(f"no trained CLIP under {store.root}/models/clip; pass --encoder ENCODER_ID") from None
    return encoder


def read_table_dataset(store: Store, rel: str, version: int | None = None, columns: list[str] | None = None):
    """A version of a Delta table as a Ray Data dataset over its data files (nothing read on the driver)."""
    import ray

    from showcase_core import tables as delta
    from showcase_core.store import filesystem_for

    paths = [filesystem_for(uri)[1] for uri in delta.file_uris(store, rel, version)]
    ds = ray.data.read_parquet(paths, filesystem=store.fs)
    return ds.select_columns(columns) if columns else ds


def test_barrier(run_id: str, parties: int = 2, timeout_s: float = 180.0) -> None:
    """For tests only: with ``SHOWCASE_TEST_COMMIT_BARRIER=DIR`` set, wait before committing until ``parties`` runs
    have reached this point (so a race test really races). Unset in every real run: returns at once."""
    folder = os.environ.get("SHOWCASE_TEST_COMMIT_BARRIER")
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, run_id), "w").close()
    deadline = time.monotonic() + timeout_s
    while len(os.listdir(folder)) < parties and time.monotonic() < deadline:
        time.sleep(0.05)


def versions() -> dict:
    out = {"showcase": __version__, "python": platform.python_version()}
    for name in ("pyarrow", "ray", "torch"):
        module = sys.modules.get(name)
        if module is not None:
            out[name] = getattr(module, "__version__", "?")
    return out


class Progress:
    """Progress lines on stderr, at most one every ``every`` seconds (and always the last one)."""

    def __init__(self, stage: str, what: str, total: int, every: float = 2.0):
        self.stage, self.what, self.total, self.every = stage, what, total, every
        self.start = self.last = time.monotonic()

    def update(self, done: int, extra: str = "") -> None:
        now = time.monotonic()
        if done < self.total and now - self.last < self.every:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        print(f"[{self.stage}] {self.what}: {done}/{self.total} ({rate:.1f}/s){' ' + extra if extra else ''}",
              file=sys.stderr, flush=True)


class Timer:
    """``with timer("stage"): ...`` records the seconds of each named span in ``timer.timings``."""

    def __init__(self):
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(time.monotonic() - started, 3)


def new_report(stage: str, settings: dict, run_id: str) -> dict:
    return {"stage": stage, "run_id": run_id, "started_at": utc_now(), "settings": settings,
            "counts": {}, "timings_s": {}, "versions": {}}


def run(stage: str, main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a job's main with the contract's exit codes; never a stack trace for a user mistake."""
    try:
        code = main(argv)
        return 0 if code is None else int(code)
    except UserError as e:
        print(f"showcase {stage}: error: {e}", file=sys.stderr)
        return 2
    except LostRace as e:
        print(f"showcase {stage}: lost a commit race: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"showcase {stage}: interrupted", file=sys.stderr)
        return 1
    except SystemExit as e:
        return int(e.code or 0)
    except Exception:
        traceback.print_exc()
        print(f"showcase {stage}: failed (see the traceback above)", file=sys.stderr)
        return 1


__all__ = ["UserError", "parse_args", "open_store", "start_ray", "actor_plan", "versions", "Progress", "Timer",
           "new_report", "run", "new_run_id"]
