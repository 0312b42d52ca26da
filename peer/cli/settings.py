"""A subcommand's settings from four layers: flag > environment > config file > default.

Every visible flag can also come from ``BARNRAISE_<FLAG>`` (``--max-rounds``:
``BARNRAISE_MAX_ROUNDS``) or from a key of ``--config FILE.toml`` (``max-rounds`` or
``max_rounds``); ``BARNRAISE_CONFIG`` names the file when ``--config`` does not. The argparse
definition is the only list of flags: ``Settings(parser)`` reads it, so a new flag is settable
everywhere at once. Hidden flags (test and benchmark hooks: ``--inject``, ``--events``,
``--slowdown``, ...) are command-line only, so a stray variable never installs a fault.

Values. Environment: a list flag takes items separated by spaces or commas; a switch takes
1/true/yes/on or 0/false/no/off; an empty variable counts as unset. File: TOML types (a list flag
takes an array, or one string split as in the environment; a number flag takes a number; a path
takes a string, ``~`` expanded, relative to the working directory). ``--print-config`` prints
the result as TOML that ``--config`` reads back, each line commented with the layer it came from.

A mistake (unknown key, wrong type, unreadable file) is a ConfigError: one line, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping
from pathlib import Path

from barnraise.coordinator.errors import ConfigError

ENV_PREFIX = "BARNRAISE_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
FLAG_ONLY = ("config", "print_config")  # about the layers themselves: command line only
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
TYPE_NAMES = {int: "an integer", float: "a number", Path: "a path", str: "a string"}


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()  # the parse-time default of a layered flag: "not given on the command line"


LAYERS_HELP = (
    "Every flag can also be set as BARNRAISE_<FLAG> (BARNRAISE_INITIAL_PEERS, BARNRAISE_MAX_ROUNDS, ...) "
    "or as a key of --config FILE.toml (initial-peers, max-rounds, ...). A flag beats the environment, "
    "which beats the file, which beats the default."
)


def add_settings(parser: argparse.ArgumentParser) -> Settings:
    """Add ``--config`` and ``--print-config`` to a subcommand's parser and layer every visible flag
    added before: call it after the last ``add_argument``."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE.toml",
        help="settings file: keys are these flags without dashes; flags and BARNRAISE_<FLAG> variables win",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="check the settings, print them as TOML and exit"
    )
    return Settings(parser)


def env_name(dest: str) -> str:
    return ENV_PREFIX + dest.upper()


def is_switch(action: argparse.Action) -> bool:
    return action.nargs == 0 and isinstance(action.const, bool)


def is_list(action: argparse.Action) -> bool:
    return action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs > 0)


def _scalar(action: argparse.Action, value, where: str):
    convert = action.type or str
    try:
        out = convert(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not {TYPE_NAMES.get(convert, 'valid')}") from None
    if action.choices is not None and out not in action.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, action.choices))}")
    return out.expanduser() if isinstance(out, Path) else out


def _items(action: argparse.Action, items: list, where: str) -> list:
    if not items and action.nargs == "+":
        raise ConfigError(f"{where}: needs at least one value")
    return items


def from_text(action: argparse.Action, text: str, where: str):
    """A flag's value from an environment variable (or a file's string for a list flag)."""
    if is_switch(action):
        word = text.strip().lower()
        if word in TRUE + FALSE:
            return word in TRUE
        raise ConfigError(f"{where}: {text!r} is not a switch value: use true or false (1/0, yes/no, on/off)")
    if is_list(action):
        parts = [p for p in re.split(r"[\s,]+", text.strip()) if p]
        return _items(action, [_scalar(action, p, where) for p in parts], where)
    return _scalar(action, text.strip(), where)


def from_toml(action: argparse.Action, value, where: str):
    """A flag's value from a TOML value, whose type must fit the flag's."""
    if is_switch(action):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if is_list(action):
        if isinstance(value, str):
            return from_text(action, value, where)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected an array (or a string of items), got {value!r}")
        return _items(action, [_typed(action, v, where) for v in value], where)
    return _typed(action, value, where)


def _typed(action: argparse.Action, value, where: str):
    convert = action.type or str
    fits = {int: (int,), float: (int, float)}.get(convert, (str,))
    if isinstance(value, bool) or not isinstance(value, fits):
        raise ConfigError(f"{where}: expected {TYPE_NAMES.get(convert, 'a string')}, got {value!r}")
    return _scalar(action, value, where)


def load_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ConfigError("--config needs Python 3.11 or the tomli package: pip install tomli") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(
            f"cannot read config file {path}: {e.strerror}; pass a readable TOML file"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


class Settings:
    """The layered flags of one subcommand's parser. Built after its last ``add_argument``: it
    takes each visible flag's default (a required flag becomes optional on the command line and
    is checked after the merge) and leaves ``UNSET`` in its place."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser
        self.actions: dict[str, argparse.Action] = {}  # dest -> a flag settable in all layers
        self.hidden: set[str] = set()  # dests of command-line-only test hooks
        self.defaults: dict[str, object] = {}
        self.required: list[argparse.Action] = []
        for action in parser._actions:
            if not action.option_strings or action.dest == "help" or action.dest in FLAG_ONLY:
                continue
            if action.help == argparse.SUPPRESS:
                self.hidden.add(action.dest)
                continue
            self.actions[action.dest] = action
            self.defaults[action.dest], action.default = action.default, UNSET
            if action.required:
                action.required = False
                self.required.append(action)

    def from_env(self, environ: Mapping[str, str]) -> dict:
        return {
            dest: from_text(action, environ[env_name(dest)], f"environment variable {env_name(dest)}")
            for dest, action in self.actions.items()
            if environ.get(env_name(dest), "").strip()
        }

    def from_file(self, path: Path) -> dict:
        out = {}
        for key, value in load_toml(path).items():
            dest = key.replace("-", "_")
            if dest in self.hidden:
                raise ConfigError(f"config file {path}: {key!r} is a test hook: pass it on the command line")
            if dest not in self.actions:
                raise ConfigError(
                    f"config file {path}: unknown key {key!r}; the keys are the flags of "
                    f"`{self.parser.prog} --help` without the leading dashes"
                )
            out[dest] = from_toml(self.actions[dest], value, f"config file {path}: {key}")
        return out

    def resolve(
        self, args: argparse.Namespace, environ: Mapping[str, str], require: bool = True
    ) -> tuple[argparse.Namespace, dict]:
        """``args`` with every flag not given filled from the environment, then the file, then its
        default; and where each value came from ("flag", "env NAME", "file PATH", "default").
        ``require=False`` skips the required-flag check (``peer pause`` needs no --initial-peers)."""
        config = args.config or (Path(environ[CONFIG_ENV]) if environ.get(CONFIG_ENV, "").strip() else None)
        given = {d: getattr(args, d) for d in self.actions if getattr(args, d) is not UNSET}
        env = self.from_env(environ)
        layers = [
            ("flag", given),
            *((f"env {env_name(d)}", {d: v}) for d, v in env.items()),
            (f"file {config}", self.from_file(config) if config else {}),
            ("default", self.defaults),
        ]
        merged, origin = vars(args).copy(), {}
        for dest in self.actions:
            origin[dest], merged[dest] = next(
                (name, values[dest]) for name, values in layers if dest in values
            )
        for action in self.required if require else ():
            if merged[action.dest] is None:
                self.parser.error(f"the following arguments are required: {action.option_strings[0]}")
        return argparse.Namespace(**merged), origin

    def render(self, args: argparse.Namespace, origin: Mapping[str, str]) -> str:
        """The settings as TOML that ``--config`` reads back, each with the layer it came from."""
        lines = [f"# {self.parser.prog}: flag > environment ({ENV_PREFIX}<FLAG>) > config file > default"]
        for dest in self.actions:
            key, value = dest.replace("_", "-"), getattr(args, dest)
            if value is None:
                lines.append(f"# {key} is not set  ({origin[dest]})")
            else:
                lines.append(f"{key} = {toml_value(value)}  # {origin[dest]}")
        return "\n".join(lines) + "\n"


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a TOML basic string
