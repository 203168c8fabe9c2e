"""The one-layer calculator behind ``cnn calc``: flags to a one-layer spec."""

from __future__ import annotations

from typing import Any

from cnncli.errors import SpecError
from cnncli.spec import Spec, parse_hwc, spec_from_dict


def _pair(text: str, what: str) -> Any:
    parts = text.lower().replace(",", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise SpecError(f"--{what} must be an integer or HxW, got {text!r}") from None
    return nums[0] if len(nums) == 1 else nums


def one_layer_spec(
    kind: str,
    input: str,
    *,
    filters: int | None,
    kernel: str,
    stride: str | None,
    padding: str,
    dilation: int = 1,
    groups: int = 1,
    pool_type: str = "max",
    ceil: bool = False,
    output_padding: int = 0,
) -> Spec:
    """A :class:`Spec` of the single layer the flags describe (validated like any spec)."""
    shape = parse_hwc(input)
    params: dict[str, Any] = {"kernel": _pair(kernel, "kernel")}
    if stride is not None:
        params["stride"] = _pair(stride, "stride")
    if kind in ("conv", "deconv"):
        if filters is None:
            raise SpecError(f"{kind} needs --filters")
        params["filters"] = filters
        params["groups"] = groups
        params["dilation"] = dilation
        if kind == "conv":
            params["padding"] = padding if padding.isalpha() else _pair(padding, "padding")
        else:
            params["padding"] = _pair(padding, "padding")
            params["output_padding"] = output_padding
    elif kind == "pool":
        params = {
            "type": pool_type,
            "size": params.pop("kernel"),
            "ceil": ceil,
            "padding": _pair(padding, "padding"),
            **params,
        }
    else:
        raise SpecError(f"calc knows conv, deconv and pool, not {kind!r}")
    return spec_from_dict(
        {"name": f"{kind} calculator", "input": list(shape), "layers": [{kind: params}]}
    )
