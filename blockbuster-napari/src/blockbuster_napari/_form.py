"""Form fields from a factory's signature (magicgui widgets): a backend's options as the user
edits them, and back to the keyword arguments that differ from the factory's defaults."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable, Iterable
from typing import Any

from magicgui.widgets import CheckBox, Container, FloatSpinBox, LineEdit, SpinBox, Widget

LIMIT = 2**31 - 1


def option_parameters(factory: Callable, skip: Iterable[str] = ()) -> list[inspect.Parameter]:
    """The keyword options of ``factory``: every named parameter but ``skip`` (``*args`` and
    ``**kwargs`` have no field)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return []
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p for p in parameters if p.kind in named and p.name not in set(skip)]


def field_for(parameter: inspect.Parameter) -> Widget:
    """One field: a check box, spin box or text field by the default's type; text (a Python
    literal, empty for ``None``) for anything else, the annotation as its tooltip."""
    default = parameter.default
    label = parameter.name.replace("_", " ")
    hint = parameter.annotation if parameter.annotation is not inspect.Parameter.empty else ""
    common = {"name": parameter.name, "label": label, "tooltip": str(hint) or None}
    if isinstance(default, bool):
        return CheckBox(value=default, **common)
    if isinstance(default, int):
        return SpinBox(value=default, min=-LIMIT, max=LIMIT, **common)
    if isinstance(default, float):
        return FloatSpinBox(value=default, min=-1e12, max=1e12, step=0.01, **common)
    if isinstance(default, str):
        return LineEdit(value=default, **common)
    text = "" if default in (None, inspect.Parameter.empty) else repr(default)
    required = default is inspect.Parameter.empty
    tooltip = f"{hint} (required)" if required else f"{hint} (empty: {default!r})"
    return LineEdit(value=text, **{**common, "tooltip": tooltip})


def parse_text(text: str) -> Any:
    """A Python literal (``3``, ``[0, 0]``, ``None``), else the text itself (a model name)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


class OptionsForm(Container):
    """The options of one factory as magicgui fields; :meth:`options` gives back what the user
    changed (the factory's own defaults apply to the rest)."""

    def __init__(self, factory: Callable | None = None, *, skip: Iterable[str] = (), **kwargs):
        super().__init__(**kwargs)
        self.parameters = option_parameters(factory, skip) if factory is not None else []
        self.extend([field_for(p) for p in self.parameters])

    def options(self) -> dict[str, Any]:
        chosen = {}
        for parameter in self.parameters:
            value = self[parameter.name].value
            if isinstance(self[parameter.name], LineEdit) and not isinstance(parameter.default,
                                                                              str):
                if value.strip() == "":
                    continue
                value = parse_text(value.strip())
            if value != parameter.default:
                chosen[parameter.name] = value
        return chosen
