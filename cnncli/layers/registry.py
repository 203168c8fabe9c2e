"""The layer registry: type name -> :class:`~cnncli.layers.base.Layer` subclass."""

from __future__ import annotations

from cnncli.layers.base import Layer

REGISTRY: dict[str, type[Layer]] = {}


def register(cls: type[Layer]) -> type[Layer]:
    """Class decorator: make ``cls.type`` usable in specs."""
    if cls.type in REGISTRY:
        raise RuntimeError(f"layer type {cls.type!r} registered twice")
    REGISTRY[cls.type] = cls
    return cls


def layer_types() -> dict[str, type[Layer]]:
    """Every registered layer type (importing the modules that define them)."""
    from cnncli.layers import activation, blocks, conv, core, norm, pool  # noqa: F401

    return dict(REGISTRY)
