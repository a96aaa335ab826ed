"""
Command-line plumbing the entry points share: one-line errors, and flags built from a config
dataclass's fields (a field's default is the flag's default, one help line per field).
"""

import argparse
import typing
from dataclasses import fields


class UserError(Exception):
    """A problem with the user's input: the CLIs print it as one line and exit non-zero."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (no usage dump) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def field_type(f):
    """The type a flag parses a field with: int for `int`, and for `Optional[int]` too."""
    args = [a for a in typing.get_args(f.type) if a is not type(None)]
    return args[0] if args else f.type


def add_config_flags(parser, cls, helps, choices=None, bare=None, defaults=None):
    """One flag per field of the dataclass `cls` that has a help line in `helps` (a help of
    None: no flag), spelled --name and, for names with underscores, --name-with-dashes. Every
    flag defaults to None, so `config_values` can tell what was given. choices: field ->
    allowed values; bare: field -> the value of the flag given without one (--compile);
    defaults: field -> the default shown in the help, where a preset changes it."""
    choices, bare, defaults = choices or {}, bare or {}, defaults or {}
    for f in fields(cls):
        if helps.get(f.name) is None:
            continue
        dashed = f"--{f.name.replace('_', '-')}"
        names = [f"--{f.name}"] + ([dashed] if "_" in f.name else [])
        default = defaults.get(f.name, f.default)
        text = helps[f.name] + ("" if default is None else f" (default {default})")
        kind = field_type(f)
        if kind is bool:  # --flag / --no-flag
            parser.add_argument(dashed, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
            continue
        extra = {"nargs": "?", "const": bare[f.name]} if f.name in bare else {}
        metavar = None if f.name in choices else f.name.upper()  # argparse then lists the choices
        parser.add_argument(*names, dest=f.name, type=kind, default=None, choices=choices.get(f.name),
                            metavar=metavar, help=text, **extra)


def config_values(cls, args):
    """{field: value} of the flags the user gave (the others are None in `args`)."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
