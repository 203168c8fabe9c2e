"""A spec dict as readable YAML: one line per layer, blocks nested, as the shipped specs are.

``yaml.safe_dump`` alone would spread a conv over five lines as soon as one value is a
list; here every leaf layer is a one-line flow mapping and only blocks open new levels.
The result loads back with :func:`cnncli.spec.parse_spec` to the same spec.
"""

from __future__ import annotations

from typing import Any

import yaml

_BLOCK_KEYS = ("body", "shortcut", "branches", "layers")


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False).strip()
    return text.removesuffix("\n...").strip()  # a lone scalar ends its document with '...'


def _layers(entries: list, indent: int) -> list[str]:
    pad = " " * indent
    out = []
    for entry in entries:
        if isinstance(entry, str):
            out.append(f"{pad}- {entry}")
            continue
        ((kind, params),) = entry.items()
        if not any(k in params for k in _BLOCK_KEYS):
            out.append(f"{pad}- {kind}: {_flow(params) if params else '{}'}")
            continue
        out.append(f"{pad}- {kind}:")
        inner = " " * (indent + 4)
        for key, value in params.items():
            if key == "branches":
                out.append(f"{inner}branches:")
                for branch in value:
                    if not branch:
                        out.append(f"{inner}  - []")
                        continue
                    lines = _layers(branch, indent + 8)
                    out.append(f"{inner}  - " + lines[0].lstrip())
                    out.extend(lines[1:])
            elif key in _BLOCK_KEYS:
                if not value:
                    out.append(f"{inner}{key}: []")
                else:
                    out.append(f"{inner}{key}:")
                    out.extend(_layers(value, indent + 6))
            else:
                out.append(f"{inner}{key}: {_flow(value)}")
    return out


def dump_spec(data: dict[str, Any]) -> str:
    """YAML text of a spec dict (``name``, ``description``, ``input``, ``layers``, ...)."""
    lines = []
    for key, value in data.items():
        if key == "layers":
            lines.append("layers:")
            lines.extend(_layers(value, 2))
        elif key == "description":
            lines.append(yaml.safe_dump({key: value}, width=96, sort_keys=False).rstrip())
        else:
            lines.append(f"{key}: {_flow(value)}")
    return "\n".join(lines) + "\n"


def plain(value: Any) -> Any:
    """Plain dicts and lists (the loader's line-aware subclasses don't dump)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def spec_yaml(spec: Any, input_shape: Any = None) -> str:
    """The YAML of a loaded spec (from YAML or ONNX), at ``input_shape`` if given."""
    data = plain(spec.raw)
    if input_shape is not None:
        data["input"] = list(input_shape)
    return dump_spec(data)
