"""Backend options, checked against the factory's signature before the factory is called.

A backend declares its options as keyword parameters of its factory, with type annotations;
that signature is the one declaration. :func:`check_options` turns an unknown name or a value
of the wrong type (``--set segmenter.sigma=abc``) into a one-line
:class:`~blockbuster.errors.BackendOptionError` naming the backend, the option and what it takes.
Only simple annotations are checked (``int``, ``float``, ``str``, ``bool``, ``None``, unions,
``Literal``, tuples, lists, sequences, mappings, paths, callables, classes); anything else
passes.
"""

from __future__ import annotations

import collections.abc
import inspect
import os
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

import numpy as np

from blockbuster.errors import BackendOptionError


def check_options(factory: Callable, options: dict, what: str, skip: int = 0) -> None:
    """Raise :class:`BackendOptionError` for an option ``factory`` does not accept, or one whose
    value does not match the parameter's annotation. ``skip``: leading positional parameters
    that are not options (a reader's ``source``, a writer's ``path``)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    params = list(signature.parameters.values())
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        valid = [p.name for p in params[skip:]
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise BackendOptionError(
                f"{what} has no option {', '.join(map(repr, unknown))}; valid options: "
                f"{', '.join(valid) or 'none'}."
            )
    hints = _type_hints(factory, signature)
    for name, value in options.items():
        expected = hints.get(name)
        if expected is not None and not matches(value, expected):
            raise BackendOptionError(
                f"{what} option {name}={value!r} should be {describe(expected)}, not "
                f"{type(value).__name__}."
            )


def matches(value: Any, expected: Any) -> bool:
    """Whether ``value`` fits the annotation ``expected`` (unknown annotations always fit)."""
    origin = typing.get_origin(expected)
    args = typing.get_args(expected)
    if expected is Any or isinstance(expected, typing.TypeVar | typing.ForwardRef | str):
        return True
    if expected is None or expected is type(None):
        return value is None
    if origin is typing.Union or origin is types.UnionType:
        return any(matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if origin in (tuple, list, collections.abc.Sequence):
        return _matches_sequence(value, origin, args)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, collections.abc.Mapping)
    if origin is collections.abc.Callable or expected is collections.abc.Callable:
        return callable(value)
    if origin is not None:
        return True
    return _matches_class(value, expected)


def _matches_class(value: Any, expected: Any) -> bool:
    if expected is bool:
        return isinstance(value, bool | np.bool_)
    if expected is int:
        return isinstance(value, int | np.integer) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
            value, bool)
    if isinstance(expected, type) and issubclass(expected, os.PathLike):
        return isinstance(value, str | os.PathLike)
    if expected in (tuple, list):
        return isinstance(value, tuple | list)
    if expected is dict:
        return isinstance(value, collections.abc.Mapping)
    if isinstance(expected, type):
        return isinstance(value, expected)
    return True


def _matches_sequence(value: Any, origin: Any, args: tuple) -> bool:
    if not isinstance(value, tuple | list):
        return False
    if not args:
        return True
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return len(args) == len(value) and all(matches(v, a) for v, a in zip(value, args))
    return all(matches(v, args[0]) for v in value)


def describe(expected: Any) -> str:
    """``float``, ``int or None``, ``one of 'a', 'b'`` ... for error messages."""
    origin = typing.get_origin(expected)
    if expected is None or expected is type(None):
        return "None"
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(describe(arg) for arg in typing.get_args(expected))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(expected)))
    if isinstance(expected, type):
        return expected.__name__
    return str(expected).replace("typing.", "")


def _type_hints(factory: Callable, signature: inspect.Signature) -> dict[str, Any]:
    """Each parameter's annotation, resolved where it was written as a string."""
    module = sys.modules.get(getattr(factory, "__module__", ""), None)
    namespace = dict(vars(module)) if module else {}
    resolved = {}
    for name, param in signature.parameters.items():
        annotation = param.annotation
        if annotation is inspect.Parameter.empty:
            continue
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)  # noqa: S307 - the factory's own code
            except Exception:
                continue
        resolved[name] = annotation
    return resolved
