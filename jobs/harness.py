"""The one training harness every ``train_*`` job uses: Ray Train (V2) around a per-worker loop.

Driver side, ``fit(...)``: a ``TorchTrainer`` with ``ScalingConfig`` from the job's settings (CPU or GPU workers),
``RunConfig(storage_path=ROOT/checkpoints/<stage>, name=<run name>)`` (local or S3), ``FailureConfig`` so a failed
worker group restarts from the latest checkpoint, gloo on CPU and NCCL on GPU.

Worker side, inside the loop:
- ``prepare(model, optimizer_fn, config)``: DeepSpeed (``deepspeed.initialize`` with the ZeRO stage and precision of
  the configured JSON file) when ``deepspeed_config`` is set, plain DDP (``ray.train.torch.prepare_model``) otherwise;
- ``restore(trained)``: the state of the latest checkpoint (after a failure, or a rerun with the same run name);
- ``report_epoch(trained, metrics, extra, config)``: a checkpoint every ``checkpoint_every`` epochs and after the last,
  reported to Ray Train with that epoch's metrics (every rank writes its own shard under DeepSpeed; rank 0 alone under
  DDP); the epochs between are in the checkpoint's history, not reported one by one.

Model maths stays in showcase_core; a loop only wires library calls together.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass

import pyarrow.fs as pafs
from pydantic import field_validator

from showcase_core.store import Store, filesystem_for

from .common import JobSettings, setting


class TrainingSettings(JobSettings):
    """What every train_* job shares: the Ray Train worker group, failures, checkpoints and DeepSpeed."""

    num_workers: int = setting(1, "Ray Train workers (data-parallel ranks)", ge=1)
    cpus_per_worker: float = setting(2, "CPUs reserved per worker (also its torch threads)", ge=0.0001, le=1024)
    use_gpu: bool = setting(False, "one GPU per worker, NCCL instead of gloo")
    max_failures: int = setting(2, "worker-group restarts from the latest checkpoint before the run fails", ge=0)
    run_name: str = setting("", "reuse a run name to resume that run from its latest checkpoint")
    deepspeed_config: str = setting("", "a DeepSpeed JSON config (ZeRO stage 1 or 2, bf16, ...); empty = plain DDP")
    checkpoint_every: int = setting(1, "epochs between checkpoints (the last epoch always has one)", ge=1)
    log_every: int = setting(10, "epochs between progress lines (the first and last epoch always have one)", ge=1)

    @field_validator("deepspeed_config")
    @classmethod
    def _deepspeed_config_fits(cls, path: str) -> str:
        if path:
            check_deepspeed_config(path)
        return path


FAULT_ENV = "SHOWCASE_TEST_FAULT_EXIT_AFTER_EPOCH"  # tests only: rank 0 exits once, right after this epoch

# DeepSpeed's checkpoint tag: its shards go to <checkpoint>/deepspeed/. Not "latest", the name of the file that
# save_checkpoint(save_latest=True) would write next to the tag directory.
DEEPSPEED_TAG = "deepspeed"


@dataclass
class Trained:
    """What the loop trains with: the (wrapped) model, its optimizer, and the DeepSpeed engine if any."""

    model: object
    optimizer: object
    engine: object = None

    @property
    def module(self):
        m = self.engine.module if self.engine is not None else self.model
        return m.module if hasattr(m, "module") else m


def check_deepspeed_config(path: str) -> None:
    """The DeepSpeed JSON file exists and asks for what the loops support; DeepSpeed is installed."""
    try:
        with open(path) as f:
            ds = json.load(f)
    except OSError:
        raise ValueError(f"--deepspeed-config {path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--deepspeed-config {path}: not valid JSON ({e})") from None
    if not isinstance(ds, dict):
        raise ValueError(f"--deepspeed-config {path}: not a JSON object")
    # the loops call loss.backward() and optimizer.step() themselves, once per batch: DeepSpeed supports that
    # (torch-style backward) with ZeRO stage 1 or 2 and no gradient accumulation; stage 3 would also leave the
    # rank-0 evaluation with partitioned parameters
    stage = (ds.get("zero_optimization") or {}).get("stage", 0)
    if stage not in (1, 2) or ds.get("gradient_accumulation_steps", 1) != 1:
        raise ValueError(f"--deepspeed-config {path}: the training loops need zero_optimization.stage 1 or 2 "
                         f"and gradient_accumulation_steps 1 (got stage {stage}, "
                         f"gradient_accumulation_steps {ds.get('gradient_accumulation_steps', 1)})")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ValueError("--deepspeed-config is set but DeepSpeed is not installed (pip install '.[gpu]')") from None


def fit(stage: str, store: Store, run_name: str, loop, loop_config: dict, cfg: TrainingSettings,
        datasets: dict | None = None, split: tuple[str, ...] = ()):
    """Run ``loop(loop_config)`` on Ray Train workers; returns the ray.train.Result. ``datasets``: Ray Data datasets a
    worker reads with ``ray.train.get_dataset_shard(name)``; those named in ``split`` are shared out among the
    workers (the same number of rows each), the others streamed whole to each worker that reads them."""
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if cfg.deepspeed_config:
        with open(cfg.deepspeed_config) as f:
            loop_config = {**loop_config, "deepspeed": json.load(f)}
    fs, path = filesystem_for(store.uri("checkpoints", stage))
    fs.create_dir(path, recursive=True)
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker=loop,
        train_loop_config={**loop_config, "fault_exit_after_epoch": int(os.environ.get(FAULT_ENV, "-1")),
                           "fault_marker": store.uri("checkpoints", stage, run_name, "_fault_injected"),
                           "cpus_per_worker": cfg.cpus_per_worker, "checkpoint_every": cfg.checkpoint_every,
                           "log_every": cfg.log_every},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        # Ray Train's default ingest options set the deprecated exclude_resources, a deprecation warning printed by
        # every run (Ray 2.60); Ray Data's defaults do for the datasets here
        datasets=datasets,
        # in order (common.in_order): each worker's share, and so each epoch's batches, the same in every run
        dataset_config=DataConfig(datasets_to_split=list(split),
                                  execution_options=ExecutionOptions(preserve_order=True)),
        run_config=RunConfig(name=run_name, storage_path=path, storage_filesystem=fs,
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             # progress lines are printed once (Ray Train would also copy prints into its log)
                             worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
                             # Ray Train's INFO lines (resources requested, worker group started, process group set
                             # up) stay in its log files (SESSION/logs/train/); its warnings still print
                             logging_config=LoggingConfig(log_level="WARNING")),
    )
    return trainer.fit()


# -- worker side ------------------------------------------------------------------------------------

def prepare(model, optimizer_fn, config: dict) -> Trained:
    """Wrap the model for distributed training: DeepSpeed when configured, DDP otherwise."""
    import logging

    import ray.train.torch
    import torch

    # one progress line per epoch is enough: Ray Train logs every report at INFO under a logger named by file
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    with contextlib.suppress(ImportError):  # a private module: other Ray versions may not have it
        from ray.train.v2._internal.execution import context as _train_context

        logging.getLogger(_train_context.__file__).setLevel(logging.WARNING)
    torch.set_num_threads(max(1, int(config.get("cpus_per_worker", 1))))
    if config.get("deepspeed"):
        device = ray.train.torch.get_device()
        if device.type == "cpu":  # else DeepSpeed probes for GPUs, warns, and only then falls back to its CPU accelerator
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # its INFO lines repeat the whole config per rank
        model = model.to(device)
        # deepspeed.initialize reuses the process group Ray Train created (gloo on CPU, NCCL on GPU): torch.distributed
        # is already initialised, so DeepSpeed wraps it instead of starting its own
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer_fn(trainable(model)),
                                                       config=config["deepspeed"])
        return Trained(engine, optimizer, engine)
    # a sparse buffer (the recommenders' graphs) is built from the same data on every rank, and DDP cannot broadcast
    # one: it would stop at wrapping the model ("No support for sparse tensors")
    sparse = [name for name, buffer in model.named_buffers() if buffer.is_sparse]
    if sparse:
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, sparse)
    model = ray.train.torch.prepare_model(model)
    return Trained(model, optimizer_fn(trainable(model)))


def trainable(model) -> list:
    """The parameters that learn (a frozen pretrained decoder's do not: the optimizer holds no state for them)."""
    return [p for p in model.parameters() if p.requires_grad]


def optimizer_step(trained: Trained):
    """``step(loss, lr=None)``: backward and update, by the DeepSpeed engine when there is one (it reduces the
    gradients and steps its wrapped optimizer), else plain torch (DDP reduces the gradients during backward). An ``lr``
    is set on every parameter group first (a schedule; under DeepSpeed ``trained.optimizer`` is the engine's)."""
    def step(loss, lr: float | None = None):
        if lr is not None:
            for group in trained.optimizer.param_groups:
                group["lr"] = lr
        if trained.engine is not None:
            trained.engine.backward(loss)
            trained.engine.step()
        else:
            trained.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            trained.optimizer.step()
    return step


def restore(trained: Trained) -> dict | None:
    """Load the latest checkpoint into model and optimizer; returns its extra state (epoch, step, history, ...).

    The state's ``resumed_after_epochs`` list gains the epoch it resumes after, so reports show every restart.
    """
    import ray.train
    import torch

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        if trained.engine is not None:
            # not strict: a checkpoint leaves out the frozen parameters (see trained_state)
            path, client_state = trained.engine.load_checkpoint(d, tag=DEEPSPEED_TAG, load_module_strict=False)
            if path is None:
                raise RuntimeError(f"no DeepSpeed checkpoint under {d}/{DEEPSPEED_TAG}")
            state = client_state["extra"]  # the rest is DeepSpeed's own metadata
        else:
            saved = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=False)
            load_trained_state(trained.module, saved["model"])
            trained.optimizer.load_state_dict(saved["optimizer"])
            state = saved["extra"]
    state = dict(state)
    state["resumed_after_epochs"] = list(state.get("resumed_after_epochs", [])) + [state["epoch"]]
    if ray.train.get_context().get_world_rank() == 0:
        print(f"resumed from the checkpoint of epoch {state['epoch'] + 1}", flush=True)
    return state


def report_epoch(trained: Trained, metrics: dict, extra: dict, config: dict) -> None:
    """After one epoch: every ``checkpoint_every`` epochs and after the last, a checkpoint, reported to Ray Train with
    the epoch's metrics (other epochs report nothing); honours the tests' one-off fault injection."""
    import ray.train
    import torch

    rank = ray.train.get_context().get_world_rank()
    epoch = extra["epoch"]
    save = (epoch + 1) % int(config.get("checkpoint_every", 1)) == 0 or epoch == config["epochs"] - 1
    # only an epoch with a checkpoint reports: Ray Train's controller takes one report per poll of its workers (every
    # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S: Ray's 2 s on a cluster, 0.25 s on a local instance) and a worker's next report
    # waits for it, so a report after each sub-second epoch made every epoch last 2 s. Every epoch's metrics are in
    # the checkpointed history.
    with tempfile.TemporaryDirectory() as d:
        if not save:
            checkpoint = None
        elif trained.engine is not None:
            # every rank writes its own ZeRO shard (Ray Train merges the ranks' directories into one checkpoint);
            # extra goes under one key, as load_checkpoint returns the client state mixed with DeepSpeed's metadata
            trained.engine.save_checkpoint(d, tag=DEEPSPEED_TAG, client_state={"extra": extra}, save_latest=False,
                                           exclude_frozen_parameters=True)
            checkpoint = ray.train.Checkpoint.from_directory(d)
        elif rank == 0:
            torch.save({"model": trained_state(trained.module), "optimizer": trained.optimizer.state_dict(),
                        "extra": extra}, os.path.join(d, "state.pt"))
            checkpoint = ray.train.Checkpoint.from_directory(d)
        else:
            checkpoint = None
        if save:
            ray.train.report(metrics, checkpoint=checkpoint)
    fault_epoch = int(config.get("fault_exit_after_epoch", -1))
    if fault_epoch >= 0 and epoch == fault_epoch and rank == 0:
        fs, marker = filesystem_for(config["fault_marker"])
        if fs.get_file_info(marker).type == pafs.FileType.NotFound:  # once per run
            with fs.open_output_stream(marker) as f:
                f.write(b"injected")
            os._exit(1)  # a hard crash of the worker process, as when a node dies


def progress(stage: str, epoch: int, epochs: int, metrics: dict, every: int = 1) -> None:
    """A line from rank 0 (Ray forwards it to the driver's terminal) for the first epoch, every ``every``-th
    (``--log-every``) and the last."""
    import ray.train

    due = epoch == 0 or epoch == epochs - 1 or (epoch + 1) % max(1, every) == 0
    if due and ray.train.get_context().get_world_rank() == 0:
        values = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
                          if k != "epoch")
        print(f"[{stage}] epoch {epoch + 1}/{epochs} {values}", flush=True)


def frozen_parameters(module) -> set[str]:
    """The names of the parameters that do not learn, tied ones under each name."""
    return {name for name, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}


def trained_state(module) -> dict:
    """The module's state without its frozen parameters: these are the packaged pretrained weights every model is
    built with (a frozen SmolLM2-135M decoder alone is 540 MB), so a checkpoint holds only what training changes."""
    frozen = frozen_parameters(module)
    return {k: v for k, v in module.state_dict().items() if k not in frozen}


def load_trained_state(module, state: dict) -> None:
    """Load a checkpoint's ``trained_state`` into a model built as for training: every entry but the frozen
    parameters must be there, and nothing else."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = sorted(set(missing) - frozen_parameters(module))
    if missing or unexpected:
        raise RuntimeError(f"the checkpoint does not fit the model: missing {missing[:3]}, unexpected "
                           f"{list(unexpected)[:3]}")


def load_checkpoint_state(checkpoint) -> tuple[dict, dict]:
    """Driver side: (model state without its frozen parameters, extra state) of the final checkpoint, DeepSpeed's
    ZeRO shards consolidated; ``load_trained_state`` puts it into a model built as for training."""
    import torch

    with checkpoint.as_directory() as d:
        if os.path.exists(os.path.join(d, "state.pt")):
            # mapped, not read: the optimizer's moments (twice the trainable weights) are never loaded here
            state = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=False, mmap=True)
            return state["model"], state["extra"]
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        model_state = get_fp32_state_dict_from_zero_checkpoint(d, tag=DEEPSPEED_TAG, exclude_frozen_parameters=True)
        saved = torch.load(os.path.join(d, DEEPSPEED_TAG, "mp_rank_00_model_states.pt"), map_location="cpu",
                           weights_only=False)
        return model_state, saved["extra"]
