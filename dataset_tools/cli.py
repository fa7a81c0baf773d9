"""Command-line conventions shared by every package of the project.

**Options are declared once, on the settings dataclass.** Each field is an option; its flag,
type, default and help all come from the field::

    from dataclasses import dataclass
    from dataset_tools.cli import option, add_dataclass_options, dataclass_from_args

    @dataclass
    class Settings:
        segment_seconds: float = option(30.0, "cut long tracks into segments this long", metavar="S")
        subtype: str = option("PCM_16", "WAV sample format", choices=("PCM_16", "FLOAT"),
                              aliases=("--wav-format",))
        trim_db: float | None = option(-60.0, "trim silence below this level (dBFS)",
                                       const_flags={"--no-trim": (None, "keep the silence")})
        progress: bool = option(True, "show a progress bar")

    parser = argparse.ArgumentParser()
    add_dataclass_options(parser, Settings)   # --segment-seconds S, --subtype ..., --progress/--no-progress
    settings = dataclass_from_args(Settings, parser.parse_args())

Rules (``add_dataclass_options``):

* flag: ``--`` + the field name with ``_`` as ``-``; ``aliases`` are other spellings of the same
  flag (old names kept working; ``--help`` lists them beside it). For a bool, an alias starting
  with ``--no-`` turns the option off.
* type, from the annotation: ``int``, ``float``, ``str``, ``Path`` (or any one-argument
  callable type); ``X | None`` is ``X`` (``None`` only as the default or through a const flag);
  ``bool`` is ``--name`` / ``--no-name``; ``Literal[...]`` gives the choices; ``tuple[X, ...]``
  and ``list[X]`` take one or more values.
* help: an argparse help string (``%%`` for a per cent sign; ``%(default)s`` works). The
  default, the field's (``defaults={"name": value}`` overrides it for this command line), is
  appended as ``(default: ...)`` unless the help already says "(default" or it is None.
  A field without a default is a required flag.
* ``choices``, ``metavar``: as in argparse. ``group``: the title of the argument group the flag
  is listed under (groups are made in field order; only when adding to a parser).
* ``positional=True``: a positional argument (``metavar``, else the name in capitals) instead
  of a flag; optional (``nargs="?"``) when it has a default.
* ``const_flags``: extra flags that store a fixed value, ``{"--no-trim": (None, "help")}``.
* ``const``: the flag's value may be left out and is then ``const`` (``--resume`` = ``--resume auto``).
* ``repeat=True`` (list fields): the flag is given once per value (``--prompt a --prompt b``).
* ``suppress_defaults(actions)``: flags not given are left out of the parsed namespace, so a
  config file's values are overridden only by the flags actually typed.
* every field is added unless named in ``exclude``; a field whose type has no flag form
  (e.g. a nested dataclass) must be excluded.

**One error convention for ``main()``** (``run_command``): an error is one ``error: ...`` line
on stderr, never a traceback (unless ``debug``), and the exit status says what kind it was:

* 0: done; 1 (``EXIT_FAILED``): the work failed while running (a full or read-only disk and other
  ``OSError``, the package's run-failure classes, anything unexpected); 2 (``EXIT_BAD_INPUT``):
  bad input, nothing or little was done (``ValueError``, ``FileNotFoundError`` and the
  package's input-error classes; argparse also exits 2 for a bad flag); 130
  (``EXIT_INTERRUPTED``): Ctrl-C.

::

    def main(argv=None) -> int:
        parser = argparse.ArgumentParser()
        add_debug_flag(parser)                      # --debug: the traceback instead of one line
        ...
        args = parser.parse_args(argv)
        return run_command(lambda: work(args), input_errors=(LockedError,), run_errors=(RunFailedError,),
                           debug=args.debug, interrupted_hint="progress is saved")
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from typing import Any, Callable, Iterable

from .atomic import os_error_line

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)

_META = "cli"  # key of the option settings in a field's metadata


# --- options from dataclass fields -------------------------------------------------------------------

def option(default: Any = dataclasses.MISSING, help: str = "", *, metavar: str | None = None,
           choices: Iterable | None = None, aliases: Iterable[str] = (), group: str | None = None,
           const_flags: dict[str, Any] | None = None, positional: bool = False, const: Any = dataclasses.MISSING,
           repeat: bool = False, default_factory: Any = dataclasses.MISSING, **field_kwargs) -> Any:
    """A dataclass ``field`` that is also a command-line option (see the module doc).

    ``const_flags`` maps a flag to ``(value, help)`` (or just the value). ``const``: the flag's
    value may be left out, and then is ``const`` (``--resume`` alone = ``--resume auto``).
    ``repeat``: a list field whose flag is given once per value (``--prompt a --prompt b``).
    Other keyword arguments go to ``dataclasses.field``."""
    meta = {"help": help, "metavar": metavar, "choices": tuple(choices) if choices is not None else None,
            "aliases": tuple(aliases), "group": group, "const_flags": dict(const_flags or {}),
            "positional": positional, "const": const, "repeat": repeat}
    metadata = {**field_kwargs.pop("metadata", {}), _META: meta}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata,
                             **field_kwargs)


def flag_name(name: str) -> str:
    """``segment_seconds`` -> ``--segment-seconds``."""
    return "--" + name.replace("_", "-")


class _Switch(argparse.Action):
    """A bool option: ``--name`` (and positive aliases) set True; ``--no-name`` and aliases
    starting with ``--no-`` set False."""

    def __init__(self, option_strings, dest, off=(), default=None, required=False, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, required=required, help=help)
        self.off = frozenset(off)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, option_string not in self.off)

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


def _plain_type(annotation) -> tuple[Any, bool]:
    """``(type, optional)``: ``X | None`` -> ``(X, True)``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) if value else "none"
    return str(value)


def _field_default(f: dataclasses.Field, defaults: dict):
    if f.name in defaults:
        return defaults[f.name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def add_dataclass_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls, exclude: Iterable[str] = (),
                          defaults: dict | None = None) -> list[argparse.Action]:
    """Add a flag for every init field of dataclass ``cls`` not in ``exclude`` (rules: module
    doc); ``defaults`` overrides field defaults on this command line. Returns the actions."""
    exclude, defaults = set(exclude), dict(defaults or {})
    unknown = (exclude | set(defaults)) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    actions = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name in exclude:
            continue
        meta = f.metadata.get(_META, {})
        target = parser
        if meta.get("group") and isinstance(parser, argparse.ArgumentParser):
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_argument_group(meta["group"])
            target = groups[meta["group"]]
        actions += _add_field(target, cls, f, hints[f.name], meta, _field_default(f, defaults))
    return actions


def _add_field(target, cls, f: dataclasses.Field, annotation, meta: dict, default) -> list[argparse.Action]:
    flag = flag_name(f.name)
    aliases = list(meta.get("aliases", ()))
    help_text = meta.get("help", "")
    required = default is dataclasses.MISSING
    if not required and default not in (None, "") and "(default" not in help_text:
        help_text = f"{help_text} (default: {_shown(default).replace('%', '%%')})".strip()
    kind, _optional = _plain_type(annotation)
    kwargs: dict[str, Any] = {"dest": f.name, "help": help_text, "required": required}
    if not required:
        kwargs["default"] = default
    if meta.get("positional"):
        if kind is bool or aliases or meta.get("const_flags"):
            raise TypeError(f"{cls.__name__}.{f.name}: a positional argument is no bool and has no aliases")
        del kwargs["dest"], kwargs["required"]
        if not required:
            kwargs["nargs"] = "?"
        kwargs["metavar"] = meta.get("metavar") or f.name.upper()
        if meta.get("choices") is not None:
            kwargs["choices"] = meta["choices"]
        return [target.add_argument(f.name, type=kind, **kwargs)]
    if kind is bool:
        strings = [flag, "--no-" + flag[2:], *aliases]
        off = [s for s in strings if s.startswith("--no-")]
        actions = [target.add_argument(*strings, action=_Switch, off=off, **kwargs)]
    else:
        choices = meta.get("choices")
        origin = typing.get_origin(kind)
        if origin is typing.Literal:
            choices = choices or typing.get_args(kind)
            kind = type(choices[0])
        elif origin in (tuple, list):
            args = [a for a in typing.get_args(kind) if a is not Ellipsis]
            if len(set(args)) != 1:
                raise TypeError(f"{cls.__name__}.{f.name}: only tuple[X, ...] / list[X] become flags")
            if meta.get("repeat"):
                kwargs["action"] = "append"
                kwargs["default"] = None  # append to a fresh list, not to the field's default
            else:
                kwargs["nargs"] = "+"
            kind = args[0]
        if meta.get("const", dataclasses.MISSING) is not dataclasses.MISSING:
            kwargs["nargs"], kwargs["const"] = "?", meta["const"]
        if not callable(kind) or dataclasses.is_dataclass(kind) or kind in (dict, set):
            raise TypeError(f"{cls.__name__}.{f.name} ({annotation}) has no command-line form; exclude it")
        kwargs["type"] = kind
        if choices is not None:
            kwargs["choices"] = choices
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        actions = [target.add_argument(flag, *aliases, **kwargs)]
    for const_flag, value in meta.get("const_flags", {}).items():
        value, const_help = value if isinstance(value, tuple) and len(value) == 2 else (value, "")
        actions.append(target.add_argument(const_flag, dest=f.name, action="store_const", const=value,
                                           help=const_help or f"same as {flag} {_shown(value)}"))
    return actions


def suppress_defaults(actions: Iterable[argparse.Action]) -> None:
    """Leave the flags of ``actions`` out of the namespace when they are not given (``--help``
    still shows the defaults): for commands whose values may also come from a config file."""
    for action in actions:
        action.default = argparse.SUPPRESS


def options_markdown(cls, exclude: Iterable[str] = (), defaults: dict | None = None) -> str:
    """A Markdown table of ``cls``'s flags (flag and aliases, default, help): the docs' option
    tables are generated from the fields too (``scripts/update_docs_options.py``), and a test
    checks that the docs hold exactly this."""
    rows = ["| flag | default | what it does |", "| --- | --- | --- |"]
    defaults = dict(defaults or {})
    for f in dataclasses.fields(cls):
        if not f.init or f.name in exclude:
            continue
        meta = f.metadata.get(_META, {})
        default = _field_default(f, defaults)
        shown = "required" if default is dataclasses.MISSING else \
            "" if default in (None, "") else _shown(default)
        flags = [f.name.upper() if meta.get("positional") else flag_name(f.name)]
        if typing.get_type_hints(cls)[f.name] is bool:
            flags.append("--no-" + f.name.replace("_", "-"))
        flags += [*meta.get("aliases", ()), *meta.get("const_flags", {})]
        text = meta.get("help", "").replace("%(default)s", shown).replace("%%", "%").replace("|", "\\|")
        rows.append(f"| {', '.join(f'`{x}`' for x in flags)} | {shown} | {text} |")
    return "\n".join(rows) + "\n"


def dataclass_from_args(cls, args: argparse.Namespace, **overrides):
    """``cls(...)`` from the parsed flags of ``add_dataclass_options`` (fields not on the command
    line keep their defaults); ``overrides`` win. The dataclass checks the values (ValueError)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name in overrides or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if value is None and f.metadata.get(_META, {}).get("repeat"):
            continue  # a repeatable flag never given: the field's default
        if isinstance(value, list) and typing.get_origin(_plain_type(hints[f.name])[0]) is tuple:
            value = tuple(value)
        values[f.name] = value
    return cls(**values, **overrides)


# --- one error convention -----------------------------------------------------------------------------

def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0].strip()


def run_command(command: Callable[[], int], *, input_errors: tuple = (), run_errors: tuple = (),
                debug: bool = False, interrupted_hint: str = "") -> int:
    """Run ``command()`` (returns an exit status) under the project's error convention (module
    doc): one ``error: ...`` line on stderr and status 2 for bad input (``INPUT_ERRORS`` and
    ``input_errors``), 1 for a failure while working (``run_errors``, other ``OSError``s and,
    as ``Type: message (run with --debug for details)``, anything unexpected), 130 on Ctrl-C
    (``interrupted: <interrupted_hint>``). ``debug``: re-raise instead (full traceback)."""
    try:
        return command()
    except KeyboardInterrupt:
        print("\ninterrupted" + (f": {interrupted_hint}" if interrupted_hint else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` & co.: not an error of the work
        if debug:
            raise
        sys.stderr.close()
        return EXIT_FAILED
    except Exception as exc:
        if debug:
            raise
        message = os_error_line(exc) if isinstance(exc, OSError) else _first_line(exc)
        if isinstance(exc, INPUT_ERRORS + tuple(input_errors)):
            code = EXIT_BAD_INPUT
        else:
            code = EXIT_FAILED
            if not isinstance(exc, (OSError, *run_errors)):  # not one the package explains: say what it is
                message = f"{type(exc).__name__}: {message} (run with --debug for details)"
        print(f"error: {message or type(exc).__name__}", file=sys.stderr)
        return code


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug``: show the full traceback of an error (pass ``args.debug`` to ``run_command``)."""
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
