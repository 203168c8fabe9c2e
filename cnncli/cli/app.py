"""The typer application object; command modules attach their commands to it."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="cnn",
    help="Convolutional neural networks from the shell: size, train and feed a CNN.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _light_coercion() -> None:
    """Coerce plain parameters without pydantic.

    Recent typer versions check every parameter value through a pydantic ``TypeAdapter``,
    and importing pydantic costs 70-150 ms: half of ``cnn shapes`` (whose report takes 32 ms).
    Our parameters are str, int, float, bool, Path and Enum, which click has already parsed;
    for those, converting the parsed value to the annotated type is all that is left. Other
    annotations, and typer versions without this layer, keep typer's own coercion.
    """
    try:
        from typer import _coercion, core
    except ImportError:
        return
    from dataclasses import dataclass
    from enum import Enum
    from pathlib import Path

    original = _coercion.build_runtime_param
    simple = (str, int, float, bool, Path)

    @dataclass(frozen=True)
    class _Plain(_coercion.RuntimeParam):
        def _coerce_value(self, value, param, ctx):  # noqa: ANN001, ANN202 (typer's)
            kind = self.annotation
            if isinstance(value, kind):
                return value
            try:
                value = kind(value)
            except (TypeError, ValueError) as exc:
                raise typer.BadParameter(f"{value!r} is not a valid {kind.__name__}",
                                         ctx=ctx, param=param) from exc
            info = self.parameter_info
            low, high = getattr(info, "min", None), getattr(info, "max", None)
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = " and ".join(f"x{op}{b}" for op, b in ((">=", low), ("<=", high))
                                      if b is not None)
                raise typer.BadParameter(f"{value} is not in the range {bounds}.",
                                         ctx=ctx, param=param)
            return value

    # other constraints typer checks in its own coercion: parameters with any keep it
    checks = {"clamp": False, "exists": False, "file_okay": True,
              "dir_okay": True, "writable": False, "readable": True, "resolve_path": False}

    def plain(info) -> bool:  # noqa: ANN001
        return all(getattr(info, k, v) == v for k, v in checks.items())

    def build(descriptor):  # noqa: ANN001, ANN202
        kind = descriptor.annotation
        if (descriptor.file_annotation is None and isinstance(kind, type)
                and (kind in simple or issubclass(kind, Enum))
                and plain(descriptor.parameter_info)):
            return _Plain(annotation=kind, parameter_info=descriptor.parameter_info)
        return original(descriptor)

    if hasattr(_coercion, "RuntimeParam") and getattr(core, "build_runtime_param", None):
        core.build_runtime_param = build
        _coercion.build_runtime_param = build


def _no_flag_metavar() -> None:
    """No ``<bool>`` after a flag in --help (``--quiet <bool>`` reads as if it took a value)."""
    try:
        from typer.core import TyperOption
    except ImportError:
        return
    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None:
        return

    def display_type_rich(self, ctx):  # noqa: ANN001, ANN202 (typer's)
        if getattr(self, "is_flag", False) and self.metavar is None:
            return None
        return shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich


_light_coercion()
_no_flag_metavar()


def _version(value: bool) -> None:
    if value:
        from cnncli import __version__

        print(f"cnn {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Convolutional neural networks from the shell: size, train and feed a CNN."""
