"""Configuration of the training commands: argument dataclasses from the command line and from JSON
files, the checks they make, and the one-line errors of the command lines.

* The argument dataclasses (:class:`training.trainer.TrainArgs`, ``DistillArgs``, ...) check their
  own values in ``__post_init__`` (:func:`check_choice`, :func:`check_min`) and raise
  :class:`ConfigError`; so does every other check of a setting or of a combination of settings.
* :func:`parse_args` fills them from the command line (``--flag-name``, and the underscore alias
  ``--flag_name``) and from a JSON file: ``--config FILE.json`` or ``--recipe NAME``.
* A command line's ``main`` turns the project's errors (:data:`ERRORS`: a setting, a data file, a
  checkpoint) into one ``error: ...`` line on stderr and exit status 2 (:func:`error_line`); the
  library below it only raises.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from training.checkpoint import CheckpointError
from training.corpora import DataError

RECIPES = Path(__file__).parent / "recipes"


class ConfigError(ValueError):
    """A setting, a config file or a combination of settings that cannot work (said in one line)."""


#: The project's errors that a command line reports as one ``error:`` line (exit status 2).
ERRORS = (ConfigError, DataError, CheckpointError)


def error_line(e: BaseException) -> str:
    """``error: MESSAGE`` on one line (the lines of a multi-line message joined with `` | ``)."""
    return "error: " + " | ".join(line.strip() for line in str(e).splitlines() if line.strip())


def flag(name: str) -> str:
    """The command-line flag of a dataclass field: ``--head-lr`` for ``head_lr``."""
    return "--" + name.replace("_", "-")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{flag(name)} must be one of {', '.join(choices)}; got {value!r}")


def check_min(name: str, value, low, strict: bool = False) -> None:
    """``value`` (None: not set, fine) is >= ``low`` (> with ``strict``) and not NaN."""
    if value is not None and (value < low or (strict and value == low) or value != value):
        raise ConfigError(f"{flag(name)} must be {'>' if strict else '>='} {low:g}; got {value!r}")


# ---------------------------------------------------------------------------------------------
# The command line and JSON config files
# ---------------------------------------------------------------------------------------------

def parse_args(dataclass_types, argv=None, prog: str | None = None) -> tuple:
    """Dataclass arguments from the command line, and from a JSON file: ``--config FILE.json`` or
    ``--recipe NAME`` (= ``--config training/recipes/NAME.json``). Keys are flag names (dashes or
    underscores); keys starting with ``_`` (``"_comment"``) are ignored. The file's values go through
    ``HfArgumentParser.parse_dict`` as they are (``false``, ``null``, numbers, lists), so the
    dataclasses check them; command-line flags override the file wherever they stand. Bad arguments
    (an unknown flag, key or recipe, a value the dataclasses refuse): :class:`ConfigError`."""
    parser = _parser(dataclass_types, prog)
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, path = _pop_config(argv)
    if path is not None:
        cfg = _read_config(path)
        known = {f.name for dc in parser.dataclass_types for f in dataclasses.fields(dc)}
        if unknown := sorted(set(cfg) - known):
            raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)} (not flags of this command)")
        try:  # the file alone: values the dataclasses refuse
            parser.parse_dict(cfg)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{path}: {e}") from None
        parser.set_defaults(**cfg)  # JSON values as they are (false, null, lists); flags override
    try:
        *parsed, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True,
                                                           look_for_args_file=False)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # a dataclass refused a value
        raise ConfigError(str(e)) from None
    if rest:
        raise ConfigError(f"unrecognized arguments: {' '.join(rest)}")
    return tuple(parsed)


def _parser(dataclass_types, prog: str | None):
    """An ``HfArgumentParser`` whose flags read ``--flag-name`` first (``--flag_name`` still works),
    with ``--config`` / ``--recipe`` in its help, and whose errors are :class:`ConfigError`."""
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        def error(self, message):  # argparse's usage + error lines and exit: one ConfigError instead
            raise ConfigError(message)

    parser = Parser(dataclass_types, prog=prog)
    for action in parser._actions:  # dashes first: what --help and the usage line show
        action.option_strings.sort(key=lambda s: "_" in s)
    # removed from argv by _pop_config before parsing; here for --help only
    parser.add_argument("--config", metavar="FILE.json", default=argparse.SUPPRESS,
                        help="read flags from a JSON object of flag names and values; flags given "
                             "on the command line override it")
    recipes = ", ".join(sorted(p.stem for p in RECIPES.glob("*.json")))
    parser.add_argument("--recipe", metavar="NAME", default=argparse.SUPPRESS,
                        help=f"--config training/recipes/NAME.json ({recipes})")
    return parser


def _pop_config(argv: list[str]) -> tuple[list[str], Path | None]:
    """Remove ``--config FILE`` / ``--recipe NAME`` (also ``--flag=value``) from argv; the file's path."""
    found, rest, i = [], [], 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if name in ("--config", "--recipe"):
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{name} needs a value")
                value, i = argv[i + 1], i + 1
            found.append((name, value))
        else:
            rest.append(argv[i])
        i += 1
    if len(found) > 1:
        raise ConfigError("give one --config or --recipe, not several")
    if not found:
        return rest, None
    name, value = found[0]
    if name == "--config":
        return rest, Path(value)
    available = sorted(p.stem for p in RECIPES.glob("*.json"))
    if value not in available:
        raise ConfigError(f"unknown recipe {value!r}; available: {', '.join(available) or 'none'}")
    return rest, RECIPES / f"{value}.json"


def _read_config(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: a config file holds one JSON object of flag names and values")
    return {k.replace("-", "_"): v for k, v in cfg.items() if not k.startswith("_")}
