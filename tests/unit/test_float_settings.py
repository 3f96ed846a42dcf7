"""Every job's float settings at their extremes: inf and nan, and values too small or too large to use, are one line
naming the setting (exit 2), never a job that starts and dies with a stack trace."""

import importlib

import pytest

from jobs.cli import STAGES
from showcase_core.settings import SettingsError, flag, parse


def float_settings():
    for stage in STAGES:
        settings = importlib.import_module(f"jobs.{stage}").Settings
        for name, field in settings.model_fields.items():
            if field.annotation is float:
                yield stage, settings, name


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_every_float_setting_of_every_job_refuses_inf_and_nan(value):
    checked = 0
    for stage, settings, name in float_settings():
        with pytest.raises(SettingsError) as e:
            required = [f"--{key}=/r" for key in ("root", "out") if key in settings.model_fields]
            parse(stage, settings, [*required, f"{flag(name)}={value}"])
        assert str(e.value) == f"{flag(name)}: input should be a finite number (got '{value}')", stage
        checked += 1
    assert checked > 40  # every job's, not none


@pytest.mark.parametrize("stage, argv, message", [
    ("ingest", ["--chunk-mb", "1e-9"], "--chunk-mb: input should be greater than or equal to 0.000001 (got '1e-9')"),
    ("ingest", ["--chunk-mb", "1e308"], "--chunk-mb: input should be less than or equal to 1048576"),
    ("ingest", ["--sidecar-task-mb", "1e-300"], "--sidecar-task-mb: input should be greater than or equal to"),
    ("embed", ["--decode-cpus", "1e-9"], "--decode-cpus: input should be greater than or equal to 0.0001"),
    ("embed", ["--decode-cpus", "1e308"], "--decode-cpus: input should be less than or equal to 1024"),
    ("serve", ["--num-cpus", "1e-9"], "--num-cpus must be 0 or at least 0.0001, got 1e-09"),
    ("serve", ["--num-gpus", "1e308"], "--num-gpus: input should be less than or equal to 1024"),
    ("serve", ["--ingress-num-cpus", "0.00001"], "--ingress-num-cpus must be 0 or at least 0.0001"),
    ("serve", ["--rate-limit-per-s", "1e-320"], "--rate-limit-per-s must be 0 or at least 0.0001"),
    ("serve", ["--target-ongoing-requests", "1e-320"], "--target-ongoing-requests: input should be greater than or "
                                                       "equal to 0.01"),
    ("serve", ["--retry-backoff-s", "1e308"], "--retry-backoff-s: input should be less than or equal to 60"),
])
def test_settings_too_small_or_too_large_to_use_are_one_line(stage, argv, message):
    settings = importlib.import_module(f"jobs.{stage}").Settings
    with pytest.raises(SettingsError) as e:
        parse(stage, settings, ["--root", "/r", *argv])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_the_smallest_sizes_and_shares_allowed_are_usable():
    from jobs import embed, ingest, serve

    cfg = parse("ingest", ingest.Settings, ["--root", "/r", "--chunk-mb", "1e-6", "--sidecar-task-mb", "1e-6"])
    assert int(cfg.chunk_mb * 2**20) == int(cfg.sidecar_task_mb * 2**20) == 1  # a byte a task, not 0
    assert parse("embed", embed.Settings, ["--root", "/r", "--decode-cpus", "0.0001"]).decode_cpus == 0.0001
    cfg = parse("serve", serve.Settings, ["--root", "/r", "--num-cpus", "0", "--num-gpus", "0.0001",
                                          "--rate-limit-per-s", "0"])
    assert (cfg.num_cpus, cfg.num_gpus, cfg.rate_limit_per_s) == (0, 0.0001, 0)
