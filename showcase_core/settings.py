"""Typed settings: one declaration per job (a pydantic model), read from defaults < a YAML file < the command line.

A job declares ``class Settings(JobSettings)`` (``SettingsBase`` for one without a store) with one ``setting(default, help, ge=..., ...)`` per field: its type,
default, allowed range and one-line meaning. ``parse(stage, Settings, argv)`` is the only reader: ``--help`` prints
every setting with its default and meaning, and a wrong name, type or value fails with one line naming the setting
(``SettingsError``; the jobs exit 2). Cross-field rules are ``model_validator``s of the declaration, so every check of
a setting lives next to it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class SettingsError(Exception):
    """A setting that is unknown, of the wrong type or out of range, or a config file that cannot be read."""


def setting(default: Any, help: str, **constraints) -> Any:
    """A field of a settings declaration: default, one-line help, and pydantic constraints (ge, gt, le, pattern)."""
    return Field(default, description=help, **constraints)


def comma_list(name: str, value: str, allowed) -> list[str]:
    """A comma-separated setting: some of ``allowed``, at least one, each once, in the order given (for a field
    validator)."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items or set(items) - set(allowed):
        raise ValueError(f"{flag(name)} must list some of {', '.join(allowed)}, got {value!r}")
    twice = next((item for item in items if items.count(item) > 1), None)
    if twice:  # each is one pass of the job: a second would redo the first and overwrite its counts
        raise ValueError(f"{flag(name)} lists {twice} twice (got {value!r})")
    return items


def iso_date(name: str, value: str) -> str:
    """A YYYY-MM-DD setting, normalised (for a field validator)."""
    import datetime as dt

    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise ValueError(f"{flag(name)} must be YYYY-MM-DD, got {value!r}") from None


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class SettingsBase(BaseModel):
    """What every declaration shares: unknown names fail, values are checked on assignment too, defaults too; a float
    is finite (inf passes a lower bound, and no job's arithmetic has a use for inf or nan)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True,
                              coerce_numbers_to_str=True, allow_inf_nan=False)

    def pick(self, *names: str) -> dict:
        """Some settings as a plain dict (what a Ray worker or a model card gets)."""
        return {name: getattr(self, name) for name in names}


class JobSettings(SettingsBase):
    """Base of every job that works on a store: ``root`` is required."""

    root: str = setting("", "the store: a local path, file:// or s3:// URI")

    @model_validator(mode="after")
    def _root_given(self):
        if not self.root:
            raise ValueError("--root is required (a local path, file:// or s3:// URI)")
        return self


def bounds(settings_class: type[SettingsBase], name: str) -> str:
    """What values a setting allows, as ``>= 1, <= 10`` or ``one of a, b`` ('' when any value of its type)."""
    field = settings_class.model_fields[name]
    found = []
    for item in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("pattern", "matches")):
            if getattr(item, attr, None) is not None:
                found.append(f"{sign} {getattr(item, attr)}")
    if get_origin(field.annotation) is Literal:
        found.append("one of " + ", ".join(map(str, get_args(field.annotation))))
    return ", ".join(found)


def describe(settings_class: type[SettingsBase], name: str) -> str:
    """``help [default: X; >= 1]``: one setting as ``--help`` shows it."""
    field = settings_class.model_fields[name]
    allowed = bounds(settings_class, name)
    return f"{field.description} [default: {field.default!r}{'; ' + allowed if allowed else ''}]"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise SettingsError(message)


def _parser(stage: str, settings_class: type[SettingsBase]) -> argparse.ArgumentParser:
    parser = _Parser(prog=f"showcase {stage}", allow_abbrev=False, argument_default=argparse.SUPPRESS,
                     description=(settings_class.__doc__ or "").strip().splitlines()[0] if settings_class.__doc__
                     else None, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE.yaml", help="settings from a YAML mapping (the command line wins)")
    for name, field in settings_class.model_fields.items():
        kind = field.annotation if isinstance(field.annotation, type) and get_origin(field.annotation) is None else str
        if kind is bool:
            parser.add_argument(flag(name), dest=name, nargs="?", const="true", metavar="BOOL",
                                help=describe(settings_class, name))
        else:
            parser.add_argument(flag(name), dest=name, metavar=kind.__name__.upper(),
                                help=describe(settings_class, name))
    return parser


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"] or message.startswith("--"):  # a validator's own message names the settings
        return message
    name = str(first["loc"][0])
    return f"{flag(name)}: {message[0].lower() + message[1:]} (got {first.get('input')!r})"


def _dashed(token: str) -> str:
    """``--num_gpus=1`` -> ``--num-gpus=1``: a setting's name may be spelt with _ (serve run, a RayService's args)."""
    if not token.startswith("--"):
        return token
    name, sep, value = token.partition("=")
    return name.replace("_", "-") + sep + value


def parse(stage: str, settings_class: type[SettingsBase], argv: list[str] | None) -> SettingsBase:
    """Defaults < ``--config FILE.yaml`` < ``--key value``; ``--help`` prints the declaration and exits 0."""
    argv = [_dashed(token) for token in (sys.argv[1:] if argv is None else argv)]
    namespace, extra = _parser(stage, settings_class).parse_known_args(argv)
    if extra:
        what = extra[0].split("=", 1)[0]
        raise SettingsError(f"unknown setting {what} for {stage} (`showcase {stage} --help` lists them)"
                            if what.startswith("--") else f"unexpected argument {what!r} (settings look like --key value)")
    given = vars(namespace)
    values: dict = {}
    path = given.pop("config", None)
    if path:
        values.update(read_config(stage, settings_class, path))
    values.update(given)
    try:
        return settings_class.model_validate(values)
    except ValidationError as e:
        raise SettingsError(_one_line(e)) from None


def read_config(stage: str, settings_class: type[SettingsBase], path: str) -> dict:
    """A YAML mapping of settings (keys with - or _), every key one the declaration has."""
    try:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f) or {}
    except OSError as e:
        raise SettingsError(f"--config: cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"--config: {path} is not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise SettingsError(f"--config: {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise SettingsError(f"--config: {path} must hold a mapping of settings")
    values = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    unknown = sorted(set(values) - set(settings_class.model_fields))
    if unknown:
        raise SettingsError(f"unknown setting {flag(unknown[0])} in {path} for {stage} "
                            f"(known: {', '.join(flag(k) for k in settings_class.model_fields)})")
    return values


def reference(stage: str, settings_class: type[SettingsBase]) -> str:
    """The settings of one job as a Markdown table (the README's reference is generated from this)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = [f"| `{flag(name)}` | `{cell(repr(field.default))}` | {cell(bounds(settings_class, name))} | "
            f"{cell(field.description)} |" for name, field in settings_class.model_fields.items()]
    return "\n".join([f"`showcase {stage}`", "", "| setting | default | allowed | meaning |", "|---|---|---|---|",
                      *rows])
