"""Typed settings (showcase_core.settings): defaults < YAML < command line, one-line errors, --help as the manual."""

from typing import Literal

import pytest
from pydantic import model_validator

from showcase_core.settings import JobSettings, SettingsError, parse, read_config, setting


class Example(JobSettings):
    """An example job."""

    epochs: int = setting(10, "passes over the data", ge=1)
    lr: float = setting(1e-3, "learning rate", gt=0)
    mode: Literal["fast", "slow"] = setting("fast", "how")
    force: bool = setting(False, "replace what is there")
    name: str = setting("", "a name")
    low: int = setting(0, "the low end")
    high: int = setting(5, "the high end")
    batch_size: int = setting(4, "items per batch", ge=1)

    @model_validator(mode="after")
    def _ordered(self):
        if self.low > self.high:
            raise ValueError(f"--low ({self.low}) must not exceed --high ({self.high})")
        return self


def test_defaults_then_yaml_then_command_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 3\nlr: 0.5\nname: 42\n")
    got = parse("example", Example, ["--root", "/r", "--config", str(config), "--epochs", "7", "--force"])
    assert (got.epochs, got.lr, got.name, got.force, got.mode) == (7, 0.5, "42", True, "fast")
    assert parse("example", Example, ["--root=/r", "--force", "false", "--mode=slow"]).model_dump()["mode"] == "slow"
    # a name spelt with _ (serve run's and a RayService's key=value args) is the same setting
    assert parse("example", Example, ["--root=/r", "--batch_size=8", "--batch-size", "9"]).batch_size == 9
    assert parse("example", Example, ["--root=/r", "--batch_size", "8"]).batch_size == 8


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs: input should be greater than or equal to 1 (got '0')"),
    (["--epochs", "2.5"], "--epochs: "),
    (["--lr", "fast"], "--lr: input should be a valid number"),
    (["--mode", "medium"], "--mode: input should be 'fast' or 'slow' (got 'medium')"),
    (["--colour", "red"], "unknown setting --colour for example"),
    (["stray"], "unexpected argument 'stray'"),
    (["--low", "9"], "--low (9) must not exceed --high (5)"),
])
def test_a_wrong_setting_is_one_line_naming_it(argv, message):
    with pytest.raises(SettingsError) as e:
        parse("example", Example, ["--root", "/r", *argv])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_root_is_required():
    with pytest.raises(SettingsError, match="--root is required"):
        parse("example", Example, [])


def test_config_files_are_checked(tmp_path):
    (tmp_path / "bad.yaml").write_text("epochs: [1\n")
    (tmp_path / "list.yaml").write_text("- 1\n")
    (tmp_path / "unknown.yaml").write_text("epoch: 3\n")
    for name, message in (("bad", "is not valid YAML"), ("list", "must hold a mapping"),
                          ("unknown", "unknown setting --epoch in"), ("missing", "cannot read")):
        with pytest.raises(SettingsError, match=message):
            read_config("example", Example, str(tmp_path / f"{name}.yaml"))


def test_help_lists_every_setting_with_its_default_and_meaning(capsys):
    with pytest.raises(SystemExit) as e:
        parse("example", Example, ["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "An example job." in out
    for name, field in Example.model_fields.items():
        assert f"--{name.replace('_', '-')}" in out and field.description in out
    assert "passes over the data [default: 10; >= 1]" in out and "[default: 'fast'; one of fast, slow]" in out


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400"])
def test_a_float_setting_refuses_inf_and_nan_in_one_line(value, tmp_path):
    with pytest.raises(SettingsError) as e:
        parse("example", Example, ["--root", "/r", f"--lr={value}"])
    assert str(e.value) == f"--lr: input should be a finite number (got '{value}')"
    config = tmp_path / "c.yaml"
    config.write_text("lr: .inf\n")  # YAML's own infinity, a float already
    with pytest.raises(SettingsError, match="^--lr: input should be a finite number"):
        parse("example", Example, ["--root", "/r", "--config", str(config)])


def test_a_config_file_not_in_utf8_is_one_line_naming_it(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("name: café\n".encode("latin-1"))
    with pytest.raises(SettingsError) as e:
        parse("example", Example, ["--root", "/r", "--config", str(config)])
    assert str(e.value) == f"--config: {config} is not UTF-8 text" and "\n" not in str(e.value)


def test_a_comma_list_setting_refuses_an_item_given_twice():
    from showcase_core.settings import comma_list

    assert comma_list("kinds", "texts, images", ("images", "texts")) == ["texts", "images"]
    with pytest.raises(ValueError, match=r"^--kinds lists images twice \(got 'images,images'\)$"):
        comma_list("kinds", "images,images", ("images", "texts"))
