"""What every job shares: arguments and config, exit codes, run reports, Ray start-up, progress lines.

Contract: ``python -m jobs.<stage> --root ROOT [--config FILE.yaml] [--key value ...]``. Settings are the job's typed
declaration (``showcase_core.settings``): its defaults, then the YAML file, then the command line. Exit 0 on success;
exit 2 with one line on bad input or config (before expensive work); 3 when another run committed the same output
first (nothing of this run is visible); 1 on anything else.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import platform
import socket
import sys
import tempfile
import time
import traceback
from typing import Callable, NoReturn

import pyarrow as pa

from showcase_core import __version__, settings
from showcase_core.features import FeaturesError
from showcase_core.generation import DECODING
from showcase_core.registry import RegistryError
from showcase_core.settings import JobSettings, SettingsBase, setting
from showcase_core.store import STARTS_A_ROOT, Store, StoreError, new_run_id, utc_now
from showcase_core.tables import LostRace


class UserError(Exception):
    """A mistake in the job's input or config: reported as one line, exit 2."""


def parse_args(stage: str, settings_class: type[SettingsBase], argv: list[str] | None) -> SettingsBase:
    """The job's settings: its declaration's defaults < ``--config FILE.yaml`` < ``--key value`` (``--help`` lists
    them). A wrong name, type or value is one line and exit 2."""
    try:
        return settings.parse(stage, settings_class, argv)
    except settings.SettingsError as e:
        raise UserError(str(e)) from None


class DecodingSettings(JobSettings):
    """How an explanation is decoded: the same in the nightly, Serve and evaluate."""

    beams: int = setting(2, "beam-search width of the explanation", ge=1)
    no_repeat_ngram_size: int = setting(DECODING["no_repeat_ngram_size"], "beam search never repeats a token n-gram "
                                                                         "of this size (0 = off)", ge=0)
    length_penalty: float = setting(DECODING["length_penalty"], "beam-search length penalty (> 1 favours longer)",
                                    gt=0)
    max_sentences: int = setting(DECODING["max_sentences"], "an explanation ends after this many sentences (0 = no "
                                                           "budget)", ge=0)

    def decoding(self) -> dict:
        return self.pick(*DECODING)


class ShowcaseSettings(DecodingSettings):
    """How a showcase is made: the nightly's and Serve's shared settings (the same models, the same decoding)."""

    dpp_modality: str = setting("img+text", "which of the latest DPP's models picks the photos (img, text, img+text)")
    generator_variant: str = setting("pc2l", "which of the latest PC²L's variants writes the explanation")
    k: int = setting(3, "photos per showcase", ge=1)


RUN_ID = r"^([A-Za-z0-9][A-Za-z0-9._-]{0,127})?$"  # a given --run-id: part of file names, so no path in it


def open_store(root: str, writable: bool = True, new_root: bool = False) -> Store:
    """Open ROOT and make sure it can be written (or, for a reading role, read), failing fast with one line. Only a
    job that may start a ROOT (``new_root``: ingest) takes one with nothing under it: for every other job that is a
    mistyped path (on S3, where folders do not exist, a prefix without an object), refused before the write check
    would create it."""
    try:
        store = Store.open(root, fail_fast=True)
        if not new_root:
            store.check_readable()
            if not store.exists(""):
                raise StoreError(f"ROOT {store.root} does not exist (nothing under it; {STARTS_A_ROOT})")
        if writable:
            store.check_writable()
        elif new_root:
            store.check_readable()
        store.check_layout()
    except StoreError as e:
        raise UserError(str(e)) from None
    return Store.open(root)  # the same ROOT with normal timeouts and retries for the real work


def start_ray(state_api: bool = False) -> None:
    """Join the cluster the job was submitted to (RAY_ADDRESS), or start a local Ray instance.

    A local instance of a training job (``state_api``) runs the dashboard's API server, as Ray Train needs its State
    API (``include_dashboard=False`` turns that off too): every training run starts a detached PlacementGroupCleaner
    that asks the State API each second whether the run's controller lives, warns at every failed ask, and removes the
    run's placement group and exits once the controller is gone. The job's runtime env names the API server
    (RAY_API_SERVER_ADDRESS) or the cluster (RAY_ADDRESS), so Ray's actors ask this cluster even with other Ray
    instances on the machine (they would otherwise pick one by ray_current_cluster, or fail). The other jobs' local
    instances run without a dashboard: a second less of start-up, and about 3% of two cores less through a long job
    (the dashboard and its agent sample every process). One line says where the logs are (``configure_logging``).
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or None
    env_vars, local = {}, {}
    if "RAY_DATA_LOG_LEVEL" not in os.environ:  # yours (or your job's runtime env's) wins: Ray refuses both
        # Ray Data in Ray's own processes (a Ray Train dataset's split coordinator) keeps its warnings only: its info
        # lines come twice an epoch (the execution's start and plan), and the epochs print their own
        env_vars["RAY_DATA_LOG_LEVEL"] = "WARNING"
    if address is None:
        port = _free_port()
        local = {"include_dashboard": state_api, "dashboard_host": "127.0.0.1", "dashboard_port": port}
        if state_api:
            env_vars["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        local_ray_env()
    elif "://" not in address and address != "auto":
        env_vars["RAY_ADDRESS"] = address
    log_file = configure_logging()
    _LOG["announced"] = True  # by the line below
    ray.init(address=address, log_to_driver=True, logging_level="INFO", logging_format=_LOG_FORMAT,
             runtime_env={"env_vars": env_vars} if env_vars else None, **local)
    node = getattr(ray._private.worker, "_global_node", None)
    where = f"cluster {address}" if not local else "local instance"
    if local and state_api:
        where += f" (dashboard http://127.0.0.1:{local['dashboard_port']})"
    print(f"[ray] {where}; Ray's logs: {node.get_logs_dir_path() if node else '?'}; the libraries': {log_file}",
          file=sys.stderr, flush=True)


def local_ray_env() -> None:
    """Ray's settings for a local instance (one machine), as defaults in this process's environment before Ray starts
    (its processes inherit them); yours win.

    - One machine has nothing to preempt: Ray Train's preemption watcher is for cluster nodes (spot), and its creation
      logs an error line ("constructor arguments in the object store") per training run.
    - The controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (Ray's default 2 s): a run ends up to
      two polls after its loop returns and each checkpoint's report waits for a poll. Measured here, a one-report run
      of one worker: 11 s with 2 s, 7.6 s with 0.5 s; another day, 9.5-10.8 s with 0.5 s and 8.3-8.6 s with 0.25 s
      (three fits each, twice). Polling a few local workers four times a second costs nothing.
    - Idle worker processes are kept for the next task: Ray keeps at most as many as CPUs and kills the others after
      1 s idle, and a job's stages (each shuffle's, each Ray Train run's actors beside them) outnumber 2 CPUs, so on
      a small machine nearly every task started a Python process of its own (~2 s here before it ran). Up to 6 kept
      for as long as they are idle (at least one per CPU, as Ray's), and 10 s before an extra one goes: two each of
      features, nightly, train_dpp and train_pc2l on the tiny world took 0.68x and 0.63x the time they took with
      Ray's defaults (86.0 vs 127.1 s, 79.6 vs 126.7 s; a nightly 6-7 s instead of 12-13 s;
      ``tests/perf/local_workers.py``). An idle worker held 80-220 MiB (40-120 MiB of its own) during make test.
    """
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    os.environ.setdefault("RAY_num_workers_soft_limit", str(max(IDLE_WORKERS_KEPT, os.cpu_count() or 1)))
    os.environ.setdefault("RAY_idle_worker_killing_time_threshold_ms", str(IDLE_WORKER_KEPT_MS))


IDLE_WORKERS_KEPT, IDLE_WORKER_KEPT_MS = 6, 10_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_LOG: dict = {}  # this process's log file: path, handler, announced
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _LogFile(logging.FileHandler):
    """The process's log file, created at its first record, which also prints its path once."""

    def emit(self, record):
        if not _LOG.get("announced"):
            _LOG["announced"] = True
            print(f"(log messages of the libraries go to {self.baseFilename})", file=sys.stderr, flush=True)
        super().emit(record)


class _Errors(logging.StreamHandler):
    """Errors only, on whatever sys.stderr is when they happen."""

    def __init__(self):
        super().__init__()
        self.setLevel(logging.ERROR)

    def emit(self, record):
        self.stream = sys.stderr  # the current one (a redirect or a test's capture), not the one at start-up
        super().emit(record)


# libraries whose logger prints on a console handler of its own instead of propagating to the root: module -> logger
_OWN_CONSOLE = {"ray": "ray", "ray.data": "ray.data", "transformers": "transformers", "deepspeed": "DeepSpeed"}


def configure_logging(stage: str = "showcase") -> str:
    """Send the libraries' log records to one file per process, their errors alone to the terminal; returns its path.

    Python warnings and every logger that propagates to the root go to the file, and so do Ray's, transformers' and
    DeepSpeed's (each has a console handler of its own, quieted to errors when the library is imported). Ray Data
    keeps its records in its own file (SESSION/logs/ray-data/ray-data.log) and stops printing them: off a terminal its
    progress report is a multi-line dump every 10 s; on a terminal its progress bars (tqdm, not logging) stay. Worker
    processes log into Ray's session directory; ``start_ray`` and ``harness.fit`` keep Ray's and Ray Train's
    informational lines out of the terminal. The first call names the file: ``$SHOWCASE_LOG_DIR`` (default
    TMPDIR/showcase-logs) / ``<stage>-<time>-<pid>.log``; later calls return it.
    """
    if not _LOG:
        import wrapt

        folder = os.environ.get("SHOWCASE_LOG_DIR") or os.path.join(tempfile.gettempdir(), "showcase-logs")
        os.makedirs(folder, exist_ok=True)
        handler = _LogFile(os.path.join(folder, f"{stage}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"),
                           delay=True, encoding="utf-8")
        handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        _LOG.update(path=handler.baseFilename, handler=handler)
        logging.getLogger().addHandler(handler)
        logging.getLogger().addHandler(_Errors())
        logging.captureWarnings(True)
        for module in _OWN_CONSOLE:  # runs at once for a module already imported
            wrapt.register_post_import_hook(lambda _module, name=_OWN_CONSOLE[module]: _quiet_console(name), module)
    return _LOG["path"]


def _quiet_console(name: str) -> None:
    logger = logging.getLogger(name)
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)
    if name != "ray.data" and _LOG["handler"] not in logger.handlers:  # Ray Data has its file
        logger.addHandler(_LOG["handler"])


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


READ_BLOCK_BYTES = 64 * 2**20  # data files read together into one block, on disk


def in_order(ds):
    """``ds``, whose blocks Ray Data keeps in order through every step (``preserve_order``) instead of passing each
    on as its task ends: examples built by several tasks then reach training in one order whatever order the tasks
    ended in, so two runs train the same model. The setting is the dataset's context, which the datasets derived
    from ``ds`` share (a materialized one keeps a copy): set it on the first dataset of a chain."""
    ds.context.execution_options.preserve_order = True
    return ds


def read_table_dataset(store: Store, rel: str, version: int | None = None, columns: list[str] | None = None):
    """A version of an unpartitioned Delta table as a Ray Data dataset: Ray tasks read its data files
    (``read_parquet_files``), consecutive files of about 64 MiB on disk in one block (nothing read on the driver).
    Not ``ray.data.read_parquet``, which first reads every file's footer in a pool of 32 helper actors, 32 more
    worker processes: 13 of the 28 s of evaluate's dataset stage over 107 k photos (469 embedding files) on 2 CPUs."""
    import ray

    from showcase_core import tables as delta

    files = delta.data_files(store, rel, version)
    if not files:
        empty = delta.dataset(store, rel, version).schema.empty_table()
        return ray.data.from_arrow(empty.select(columns) if columns else empty)
    blocks = max(1, min(len(files), -(-sum(size for _, size in files) // READ_BLOCK_BYTES)))
    return ray.data.from_items([{"path": store.path(path)} for path, _ in files], override_num_blocks=blocks
                               ).map_batches(read_parquet_files, batch_size=1, batch_format="pyarrow",
                                             fn_kwargs={"fs": store.fs, "columns": columns})


SELECTION_BUILD_BATCH = 1024  # reviews whose selection examples one Ray Data task builds


def selection_example_datasets(store: Store, encoder_id: str, meta: dict, max_ground: int, splits: tuple[str, ...],
                               review_ids: pa.Array | None = None) -> tuple[dict, dict]:
    """The DPP's examples of each of ``splits`` (showcase_core.selection.data.examples_of_reviews: one per review
    with a ground set and a photo of the user in it) as lazy Ray Data datasets in the reviews' order (``in_order``),
    built from encoder ``encoder_id``'s feature tables (``meta``) and the reviews at the version those were built
    from; and the reviews per split ({split: rows}, whose difference to a split's examples is the reviews skipped).
    The reviews' narrow columns are read once into blocks of SELECTION_BUILD_BATCH rows, a task per block: the tasks
    share the CPUs, and each holds one block's examples. The driver holds the counts only. With ``review_ids`` (an
    evaluation's sample), of those reviews only."""
    from showcase_core import tables as delta
    from showcase_core.selection.data import examples_of_reviews

    version, columns = meta["reads"]["reviews"], ["user_id", "business_id", "split", "pic_ids"]
    if review_ids is None:
        reviews = read_table_dataset(store, "tables/reviews", version, columns)
        rows = delta.rows(store, "tables/reviews", version)
    else:
        reviews = read_table_dataset(store, "tables/reviews", version, ["review_id", *columns]).map_batches(
            rows_among, batch_size=None, batch_format="pyarrow",
            fn_kwargs={"column": "review_id", "values": review_ids, "keep": columns})
        rows = len(review_ids)
    reviews = in_order(reviews).repartition(max(1, -(-rows // SELECTION_BUILD_BATCH))).materialize()
    datasets = {split: reviews.map_batches(examples_of_reviews, batch_size=None, batch_format="pyarrow", fn_kwargs={
        "root": store.root, "encoder_id": encoder_id, "meta": meta, "max_ground": max_ground, "split": split})
        for split in splits}
    totals = dict.fromkeys(splits, 0)
    for row in reviews.map_batches(count_splits, batch_size=None, batch_format="pyarrow").take_all():
        if row["split"] in totals:
            totals[row["split"]] += row["rows"]
    return datasets, totals


def rows_among(rows: pa.Table, column: str, values: pa.Array, keep: list[str]) -> pa.Table:
    """Ray Data step: the rows whose ``column`` is among ``values``, their ``keep`` columns."""
    import pyarrow.compute as pc

    return rows.filter(pc.is_in(rows.column(column), value_set=values)).select(keep)


def count_splits(reviews: pa.Table) -> pa.Table:
    """Ray Data step: a block of reviews -> (split, rows) counts."""
    grouped = reviews.select(["split"]).group_by(["split"], use_threads=False)
    return grouped.aggregate([([], "count_all")]).rename_columns(["split", "rows"])


def read_parquet_files(batch: pa.Table, fs, columns: list[str] | None):
    """Ray Data step: rows of Parquet file paths (on ``fs``) -> their rows, one row group at a time (a task holds one
    row group of one file however large the file), only ``columns``; opening a file and each row group's read are
    made again through a short storage outage, as the store's reads are."""
    import pyarrow.parquet as pq

    from showcase_core.store import NOT_THERE, retrying

    for path in batch.column("path").to_pylist():
        with retrying(lambda: pq.ParquetFile(path, filesystem=fs),
                      retry=lambda err: not isinstance(err, NOT_THERE)) as parquet:
            for index in range(parquet.num_row_groups):
                yield retrying(lambda: parquet.read_row_group(index, columns=columns))


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
    """A step's progress on stderr (tqdm): a live bar on a terminal; elsewhere (a log file, ``ray job logs``) one
    line at most every ``every`` seconds, and always the last (``done`` reaching ``total`` closes it)."""

    def __init__(self, stage: str, what: str, total: int, every: float = 2.0):
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        self._bar = tqdm(total=total, desc=f"[{stage}] {what}", unit="", file=sys.stderr if tty else _Lines(),
                         mininterval=0.1 if tty else every, miniters=1, disable=False, leave=True, dynamic_ncols=tty,
                         bar_format=None if tty else "{desc}: {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]",
                         delay=0 if tty else every)

    @property
    def total(self) -> int:
        return self._bar.total

    @total.setter
    def total(self, total: int) -> None:
        self._bar.total = total

    def update(self, done: int, extra: str = "") -> None:
        bar = self._bar
        if extra:
            bar.set_postfix_str(extra, refresh=False)
        bar.update(done - bar.n)
        if done >= (bar.total or 0) and not bar.disable:
            if bar.last_print_t < bar.start_t + bar.delay:  # nothing shown yet: close() would show nothing either
                bar.refresh()
            bar.close()  # the last line (leave=True), however soon after the one before


class _Lines:
    """tqdm's output off a terminal: each refresh of its one rewritten line becomes a line of its own."""

    def __init__(self):
        self.last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line and line != self.last:
            self.last = line
            print(line, file=sys.stderr, flush=True)

    def flush(self) -> None:
        sys.stderr.flush()


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


def new_report(stage: str, job_settings: SettingsBase, run_id: str) -> dict:
    return {"stage": stage, "run_id": run_id, "started_at": utc_now(), "settings": job_settings.model_dump(),
            "counts": {}, "timings_s": {}, "versions": {}}


def run(stage: str, main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a job's main with the contract's exit codes; never a stack trace for a user mistake. The libraries' log
    messages go to a log file (``configure_logging``)."""
    try:
        configure_logging(stage)
        code = main(argv)
        return 0 if code is None else int(code)
    except (UserError, RegistryError, FeaturesError) as e:
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


def exit_process(code: int) -> NoReturn:
    """End a job's process with ``code`` (its ``__main__``), without the slow parts of the teardown: a job that
    succeeded stops its local Ray instance itself (Ray's exit hook first waits half a second for late worker
    messages, kept for a failed job), and Python's final garbage collections are skipped (``gc.freeze``: the process
    ends, the memory goes with it; atexit handlers and the flushes of the log file and standard streams run as
    before). Embed with nothing to do, from its last line to its exit: 3.0-3.1 s before, 1.4-1.6 s after (the final
    collections of torch's and transformers' objects alone took 1.2 s)."""
    if code == 0 and "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    gc.freeze()
    sys.exit(code)


__all__ = ["RUN_ID", "UserError", "SettingsBase", "JobSettings", "DecodingSettings", "ShowcaseSettings", "setting", "parse_args", "open_store", "start_ray", "in_order", "configure_logging", "actor_plan", "versions", "Progress", "Timer",
           "new_report", "run", "exit_process", "new_run_id"]
