"""The typer application object; command modules attach their commands to it."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="cnn",
    help="Convolutional neural networks from the shell: size, train and feed a CNN.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help layout: typer's rich panels import rich (60 ms, a third of `cnn
    # --help`), break choice lists mid-word and join epilog lines; errors: see _usage_errors
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
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
                if issubclass(kind, Enum):  # "'xml' is not one of table, json", not the class
                    allowed = ", ".join(str(m.value) for m in kind)
                    raise typer.BadParameter(f"{value!r} is not one of {allowed}.",
                                             ctx=ctx, param=param) from exc
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


def _click(module: str = ""):  # noqa: ANN202
    """The click typer runs on, or one of its modules: typer's own copy (typer >= 0.29),
    else the click package."""
    from importlib import import_module

    try:
        from typer import _click as click
    except ImportError:
        import click
    return import_module(click.__name__ + module) if module else click


def _help_types() -> None:
    """What --help shows after a parameter's name: nothing after a flag (``--quiet <bool>``
    reads as if it took a value) or after an argument's own name (``SPEC``, not ``SPEC
    <path>``); ``<int>`` for a bounded number, whose bounds the help text gives already
    (``[default: 64; x>=1]``), not ``<int range>``."""
    try:
        from typer.core import TyperArgument, TyperOption
    except ImportError:
        return
    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None:
        return

    def display_type_rich(self, ctx):  # noqa: ANN001, ANN202 (typer's)
        if self.metavar is not None:
            return None if isinstance(self, TyperArgument) else self.metavar
        if getattr(self, "is_flag", False):
            return None
        desc = getattr(self, "type_descriptor", None)
        if getattr(desc, "is_ranged", False) and getattr(self, "nargs", 1) == 1:
            return f"<{desc.ranged_type_name}>"
        return shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich
    TyperArgument.display_type_rich = display_type_rich


def _whole_short_help() -> None:
    """The command list of --help gives each command's whole first sentence, wrapped,
    instead of cutting it at the terminal's width with "..."."""
    try:
        from typer.core import TyperCommand, TyperGroup
    except ImportError:
        return
    for cls in (TyperCommand, TyperGroup):
        original = cls.get_short_help_str

        def get_short_help_str(self, limit: int = 45, _original=original) -> str:  # noqa: ANN001
            return _original(self, limit=10_000)

        cls.get_short_help_str = get_short_help_str


def _no_hyphen_breaks() -> None:
    """Help text wraps at spaces only: not inside ``--scheduler-file`` or ``[default:
    no-overwrite]`` (textwrap breaks after hyphens by default)."""
    try:
        TextWrapper = _click("._textwrap").TextWrapper  # noqa: N806
    except (ImportError, AttributeError):
        return
    original = TextWrapper.__init__

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        kwargs.setdefault("break_on_hyphens", False)
        original(self, *args, **kwargs)

    TextWrapper.__init__ = __init__


def _usage_names() -> None:
    """Usage lines name arguments as click does: ``SPEC`` if required, ``[SPEC]`` if not
    (typer writes ``{SPEC}``, which reads as a literal brace or a shell set)."""
    try:
        from typer.core import TyperArgument
    except ImportError:
        return
    if not hasattr(TyperArgument, "_usage_display_name"):
        return

    def _usage_display_name(self) -> str:  # noqa: ANN001
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")

    TyperArgument._usage_display_name = _usage_display_name


def usage_error_line(exc: Exception) -> str:
    """One line for a click usage error: ``cnn time: no such option --warmup (try 'cnn time
    --help')``, instead of click's usage, hint and message on three lines."""
    exceptions = _click(".exceptions")
    NoSuchOption, UsageError = exceptions.NoSuchOption, exceptions.UsageError  # noqa: N806

    if isinstance(exc, NoSuchOption):
        message = f"no such option {exc.option_name}"
        if exc.possibilities:
            message += f" (did you mean {' or '.join(sorted(exc.possibilities))}?)"
    else:
        message = exc.format_message().strip().rstrip(".")
        if message[:2].istitle():  # "Missing argument 'SPEC'", not "SPEC is ..."
            message = message[0].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    if ctx is None or not isinstance(exc, UsageError):
        return message
    names = ctx.help_option_names if ctx.command.get_help_option(ctx) is not None else []
    long = [n for n in names if n.startswith("--")] or names
    hint = f" (try '{ctx.command_path} {long[0]}')" if long else ""
    return f"{ctx.command_path}: {message}{hint}"


def _usage_errors() -> None:
    """Click's usage errors (exit 2) and other click errors (exit 1) as one ``error:`` line
    on stderr, like every other error of cnn; the exit codes stay click's."""
    click, exceptions = _click(), _click(".exceptions")

    def show(self, file=None) -> None:  # noqa: ANN001
        from cnncli.cli.common import error

        error(usage_error_line(self))

    def show_help(self, file=None) -> None:  # noqa: ANN001
        click.echo(self.format_message(), file=file, color=self.ctx.color)  # stdout, as before

    exceptions.ClickException.show = show
    exceptions.UsageError.show = show
    if hasattr(exceptions, "NoArgsIsHelpError"):  # `cnn` or `cnn viz` alone: the help, exit 2
        exceptions.NoArgsIsHelpError.show = show_help


_light_coercion()
_help_types()
_whole_short_help()
_no_hyphen_breaks()
_usage_names()
_usage_errors()


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
