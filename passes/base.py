"""Pass infrastructure: the Pass base class, its result, the run context and the registry.

A pass is a frozen dataclass whose fields are its options; `run(model, ctx)` edits
`model.graph` in place and returns a PassResult. Passes are registered under a
kebab-case name so that text pipelines can name them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from slimcc.errors import PipelineError


@dataclass
class PassResult:
    """What a pass did: whether the model changed, and counters/figures for reports."""

    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassContext:
    """Shared state handed to every pass: calibration data, the original model, flags.

    `calibration` is a `slimcc.ir.calibration.CalibrationData` (or None) and `reference`
    the model as it was before the pipeline started (for data-aware passes).
    """

    calibration: Any = None
    reference: Any = None
    progress: bool = True
    seed: int = 0
    notes: dict[str, Any] = field(default_factory=dict)


class Pass:
    """Base class of all passes. Subclasses are frozen dataclasses registered by name.

    Class attributes: `name` (kebab-case, set by `register_pass`), `exact` (the rewrite with
    default options keeps outputs equal to float tolerance; `is_exact()` answers for the
    configured instance and is what the verification gate asks), `needs_calibration` (needs `ctx.calibration`).
    """

    name: ClassVar[str] = ""
    exact: ClassVar[bool] = True
    needs_calibration: ClassVar[bool] = False

    def is_exact(self) -> bool:
        """Whether this configured pass keeps outputs equal to float tolerance (options may make it lossy)."""
        return bool(type(self).exact)

    def run(self, model, ctx: PassContext | None = None) -> PassResult:  # pragma: no cover - interface
        """Rewrite `model` in place and report what changed."""
        raise NotImplementedError(f"{type(self).__name__}.run")

    @classmethod
    def summary(cls) -> str:
        """The first line of the pass's docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def spec(self) -> str:
        """This configured pass as pipeline text, e.g. `prune-channels{ratio=0.5}`."""
        changed = []
        for opt in dataclasses.fields(self):
            value = getattr(self, opt.name)
            if opt.default is not dataclasses.MISSING and value == opt.default:
                continue
            changed.append(f"{opt.name}={format_option(value)}")
        return self.name + (("{" + ",".join(changed) + "}") if changed else "")


@dataclass(frozen=True)
class OptionInfo:
    """One typed option of a pass, for `slimcc passes` and the pipeline parser."""

    name: str
    type_name: str
    default: Any
    choices: tuple[str, ...] | None
    kind: type


_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(name: str, *, replace: bool = False):
    """Class decorator: register a Pass subclass under a kebab-case `name`."""
    if not name or name.lower() != name or " " in name or "," in name:
        raise ValueError(f"pass names are lower-case kebab-case, got {name!r}")

    def decorate(cls: type[Pass]) -> type[Pass]:
        if not dataclasses.is_dataclass(cls):
            cls = dataclass(frozen=True)(cls)
        if name in _REGISTRY and not replace and _REGISTRY[name] is not cls:
            raise ValueError(f"pass {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def unregister_pass(name: str) -> None:
    """Remove a pass from the registry (used by tests that register throwaway passes)."""
    _REGISTRY.pop(name, None)


def registry() -> dict[str, type[Pass]]:
    """All registered passes by name (imports the built-in pass families first)."""
    from slimcc.passes import load_builtin_passes

    load_builtin_passes()
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[Pass]:
    """The pass class registered under `name`, or a PipelineError listing valid names."""
    passes = registry()
    if name not in passes:
        raise PipelineError(f"unknown pass {name!r}; valid passes: {', '.join(passes)}")
    return passes[name]


def options_of(cls: type[Pass]) -> list[OptionInfo]:
    """Typed options of a pass class, from its dataclass fields."""
    hints = typing.get_type_hints(cls)
    infos = []
    for opt in dataclasses.fields(cls):
        if not opt.init or opt.name.startswith("_"):
            continue
        hint = hints.get(opt.name, str)
        kind, choices = _resolve_type(hint)
        default = opt.default if opt.default is not dataclasses.MISSING else (
            opt.default_factory() if opt.default_factory is not dataclasses.MISSING else None)
        type_name = "|".join(choices) if choices else kind.__name__
        infos.append(OptionInfo(opt.name, type_name, default, choices, kind))
    return infos


def _resolve_type(hint) -> tuple[type, tuple[str, ...] | None]:
    origin = typing.get_origin(hint)
    if origin is Literal:
        values = typing.get_args(hint)
        return type(values[0]), tuple(str(v) for v in values)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return _resolve_type(args[0])
        # e.g. `float | str`: keep the raw text and let the pass interpret it
        return str, None
    if hint in (int, float, bool, str):
        return hint, None
    return str, None


def parse_option(pass_name: str, info: OptionInfo, text: str) -> Any:
    """Convert option text into the option's type, or raise a one-line PipelineError."""
    def bad(expected: str) -> PipelineError:
        return PipelineError(f"{pass_name}: option {info.name}={text!r} is invalid; expected {expected}")

    if info.choices is not None:
        if text not in info.choices:
            raise bad("one of " + ", ".join(info.choices))
        return info.kind(text) if info.kind is not str else text
    if info.kind is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise bad("true or false")
    if info.kind is int:
        try:
            return int(text)
        except ValueError:
            raise bad("an integer") from None
    if info.kind is float:
        try:
            value = float(text)
        except ValueError:
            raise bad("a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise bad("a finite number")
        return value
    return text


def format_option(value: Any) -> str:
    """Render an option value the way the pipeline parser reads it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    return str(value)
