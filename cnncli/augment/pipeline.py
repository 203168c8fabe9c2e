"""Pipelines: an ordered list of ops, their text and YAML forms, presets, and fused execution.

Text form (``--ops``): comma-separated ops, each ``name``, ``name=value`` (sets the op's main
parameter) or ``name(key=value, ...)``; values are YAML scalars or ``[a, b]`` lists::

    flip,rotate=15,crop=0.8,brightness=0.2
    flip(p=0.5),rotate(limit=10, border=reflect),random_resized_crop(size=224, area=[0.8, 1])

YAML form (``--pipeline``, ``--save-pipeline``)::

    version: 1
    seed: 0            # optional: the seed of the run that saved it
    ops:
      - {op: flip, p: 0.5, axis: horizontal}
      - {op: rotate, p: 1.0, limit: 15.0, interpolation: bilinear, border: constant, fill: 0}

Every parameter is written out, so loading a saved file and saving it again gives the same
text, and the pipeline compares equal to the one that was saved.

Execution (:meth:`Pipeline.apply`) fuses work: a run of geometric ops becomes one affine warp
(one resampling, which is faster and sharper than resampling per op) and a run of lookup-table
ops becomes one table. :meth:`Pipeline.apply_unfused` applies op by op, the obvious reference.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.augment import functional as F
from cnncli.augment.io import rgbx_base
from cnncli.augment.transforms import (
    GeometricOp,
    LutOp,
    Op,
    PipelineError,
    Shape,
    make_op,
)

FORMAT_VERSION = 1

PRESETS: dict[str, str] = {
    # Small rotations, shifts and zooms only: a mirrored digit is not a digit, and a 6 rotated
    # far enough is a 9 (lecture notes, 8.3.4). Black fill matches MNIST's background.
    "digits": "rotate(limit=10),shift(limit=0.1),scale(limit=0.1)",
    # Natural photographs: mirror, small rotations with mirrored borders, zoom, colour jitter.
    "photos": (
        "flip,rotate(limit=15, border=reflect),scale(limit=0.1, border=reflect),"
        "brightness=0.2,contrast=0.2,saturation=0.2,hue=0.02"
    ),
    # Used when nothing is given: label-safe for digits, text and photos alike (no flips).
    "default": "rotate(limit=10, border=reflect),shift(limit=0.05, border=reflect),"
    "brightness=0.2,contrast=0.2",
}


@dataclass
class Pipeline:
    """An ordered list of ops; ``seed`` is remembered only to be saved and reloaded."""

    ops: list[Op] = field(default_factory=list)
    seed: int | None = None

    # ------------------------------------------------------------------ forms
    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"version": FORMAT_VERSION}
        if self.seed is not None:
            data["seed"] = int(self.seed)
        data["ops"] = [op.to_dict() for op in self.ops]
        return data

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "pipeline") -> Pipeline:
        if not isinstance(data, Mapping):
            raise PipelineError(f"{source}: expected a mapping with an 'ops' list")
        unknown = set(data) - {"version", "seed", "ops"}
        if unknown:
            raise PipelineError(f"{source}: unknown key '{sorted(unknown)[0]}'")
        version = data.get("version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise PipelineError(f"{source}: unsupported version {version!r} (expected 1)")
        seed = data.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise PipelineError(f"{source}: seed must be a non-negative integer, got {seed!r}")
        items = data.get("ops")
        if not isinstance(items, list):
            raise PipelineError(f"{source}: 'ops' must be a list")
        ops = []
        for i, item in enumerate(items, 1):
            if not isinstance(item, Mapping) or "op" not in item:
                raise PipelineError(f"{source}: op #{i} must be a mapping with an 'op' key")
            cfg = {k: v for k, v in item.items() if k != "op"}
            try:
                ops.append(make_op(str(item["op"]), cfg))
            except PipelineError as exc:
                raise PipelineError(f"{source}: op #{i}: {exc}") from None
        return cls(ops, seed)

    def to_yaml(self) -> str:
        import yaml

        header = "# cnn augment pipeline (load with: cnn augment IN --out OUT --pipeline FILE)\n"
        return header + yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def save(self, path: str | Path) -> None:
        from cnncli.fileio import atomic_write_bytes

        if Path(path).is_dir():
            raise PipelineError(f"{path}: is a folder; give a file name for the pipeline")
        atomic_write_bytes(path, self.to_yaml().encode(), "pipeline file")

    @classmethod
    def load(cls, path: str | Path) -> Pipeline:
        """Read a pipeline YAML file (a regular UTF-8 file of at most 8 MiB; safe YAML with
        duplicate keys refused, as for specs)."""
        from cnncli.errors import SpecError
        from cnncli.fileio import FileReadError, read_text
        from cnncli.yamlsrc import load_yaml

        path = Path(path)
        try:
            text = read_text(path, what="pipeline file")
        except FileReadError as exc:
            raise PipelineError(f"cannot read pipeline file {path}: {exc.reason}") from None
        try:
            data = load_yaml(text, str(path))
        except SpecError as exc:
            where = f":{exc.line}" if exc.line is not None else ""
            raise PipelineError(f"{path}{where}: not valid YAML: {exc.message}") from None
        return cls.from_dict(data, source=str(path))

    def short(self) -> str:
        """The ``--ops`` text for this pipeline (defaults left out)."""
        return ",".join(op.short() for op in self.ops)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and self.to_dict() == other.to_dict()

    # ------------------------------------------------------------------ randomness
    def sample(self, rng: np.random.Generator, shape: Shape) -> list[dict[str, Any]]:
        """Draw one record per op: ``{"op": name, "applied": bool, **sampled params}``.

        Each op first draws one uniform number for its ``p`` (always, so that changing one
        op's ``p`` does not reshuffle what the others draw), then its parameters if applied.
        ``shape`` is the input's (H, W, C); ops that change the size pass the new one on.
        """
        records: list[dict[str, Any]] = []
        for op in self.ops:
            applied = bool(rng.random() < op.p)
            rec: dict[str, Any] = {"op": op.name, "applied": applied}
            if applied:
                params = op.sample(rng, shape)
                rec.update(params)
                shape = op.output_shape(params, shape)
            records.append(rec)
        return records

    def output_shape(self, records: Sequence[Mapping[str, Any]], shape: Shape) -> Shape:
        for op, rec in zip(self.ops, records, strict=True):
            if rec["applied"]:
                shape = op.output_shape(rec, shape)
        return shape

    def __call__(
        self, img: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Sample and apply: returns (augmented image, records)."""
        records = self.sample(rng, tuple(img.shape))  # type: ignore[arg-type]
        return self.apply(img, records), records

    # ------------------------------------------------------------------ execution
    def _check_records(self, records: Sequence[Mapping[str, Any]]) -> None:
        if len(records) != len(self.ops) or any(
            rec.get("op") != op.name for op, rec in zip(self.ops, records, strict=False)
        ):
            raise PipelineError("records do not belong to this pipeline (op names differ)")

    def apply_unfused(self, img: np.ndarray, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Apply op by op (the reference: one resampling per geometric op)."""
        self._check_records(records)
        for op, rec in zip(self.ops, records, strict=True):
            if rec["applied"]:
                img = op.apply(img, rec)
        return img

    def apply(self, img: np.ndarray, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Apply the recorded parameters, fusing runs of geometric ops and of table ops."""
        self._check_records(records)
        steps = [(op, rec) for op, rec in zip(self.ops, records, strict=True) if rec["applied"]]
        source = img
        i = 0
        while i < len(steps):
            op = steps[i][0]
            if isinstance(op, GeometricOp):
                j, settings = i, {}
                while j < len(steps) and isinstance(steps[j][0], GeometricOp):
                    merged = _merge_settings(settings, steps[j][0].warp_settings())
                    if merged is None:
                        break
                    settings, j = merged, j + 1
                img = _warp_run(img, steps[i:j], settings)
            elif isinstance(op, LutOp):
                j = i
                while j < len(steps) and isinstance(steps[j][0], LutOp):
                    j += 1
                owned = img is not source and not np.may_share_memory(img, source)
                img = _lut_run(img, steps[i:j], inplace=owned)
            else:
                j = i + 1
                img = op.apply(img, steps[i][1])
            i = j
        return img


def _merge_settings(have: dict[str, Any], new: dict[str, Any]) -> dict[str, Any] | None:
    """Combine warp settings; None when they conflict (the run of geometric ops splits there)."""
    out = dict(have)
    for key, value in new.items():
        if key in out and out[key] != value:
            return None
        out[key] = value
    return out


def _warp_run(
    img: np.ndarray, steps: Sequence[tuple[Op, Mapping[str, Any]]], settings: dict
) -> np.ndarray:
    shape: Shape = img.shape  # type: ignore[assignment]
    in_shape = shape
    # Start from the first op's matrix rather than np.eye(3) @ it: one product less, and the
    # same numbers (a product with the identity can at most turn -0.0 into 0.0).
    matrix: np.ndarray | None = None
    for op, rec in steps:
        step = op.matrix(rec, shape)  # type: ignore[attr-defined]
        matrix = step if matrix is None else matrix @ step
        shape = op.output_shape(rec, shape)
    assert matrix is not None
    exact = _exact_slices(matrix, in_shape, shape)
    if exact is not None:  # a copy; RGB held 4 bytes per pixel stays so (see F.warp_affine)
        padded = rgbx_base(img)
        if padded is None:
            return np.ascontiguousarray(img[exact])
        return np.ascontiguousarray(padded[exact])[..., :3]
    cfg = {"interpolation": "bilinear", "border": "constant", "fill": 0, **settings}
    return F.warp_affine(img, matrix, shape[:2], **cfg)


def _exact_slices(matrix: np.ndarray, in_shape: Shape, out_shape: Shape) -> tuple | None:
    """Index slices equivalent to ``matrix`` when it only flips and crops by whole pixels."""
    (a, b, tx), (d, e, ty) = matrix[:2].tolist()  # Python floats: cheaper to compare
    if b != 0 or d != 0 or abs(a) != 1 or abs(e) != 1 or tx != round(tx) or ty != round(ty):
        return None
    (h, w), (oh, ow) = in_shape[:2], out_shape[:2]
    # Output column c samples input column a * c + (tx + (a - 1) / 2); likewise rows.
    x0 = int(tx) if a > 0 else int(tx) - 1
    y0 = int(ty) if e > 0 else int(ty) - 1
    x_last, y_last = x0 + int(a) * (ow - 1), y0 + int(e) * (oh - 1)
    if not (
        min(x0, x_last) >= 0
        and max(x0, x_last) < w
        and min(y0, y_last) >= 0
        and max(y0, y_last) < h
    ):
        return None

    def sl(start: int, step: int, n: int) -> slice:
        stop = start + step * n
        return slice(start, stop if stop >= 0 else None, step)

    return (sl(y0, int(e), oh), sl(x0, int(a), ow))


def _lut_run(
    img: np.ndarray, steps: Sequence[tuple[Op, Mapping[str, Any]]], *, inplace: bool = False
) -> np.ndarray:
    """Compose the steps' tables and apply them in one pass (none when they compose to the
    identity); ``inplace`` when ``img`` is a scratch array that may be overwritten."""
    channels, top = img.shape[2], F.maxval(img)
    pending: np.ndarray | None = None  # composed table not yet applied to ``img``
    for op, rec in steps:
        context: dict[str, Any] = {}
        needs = op.needs  # type: ignore[attr-defined]
        if needs == "image" and pending is not None:
            img, pending = F.apply_luts(img, pending, inplace=inplace), None
            inplace = True
        if needs == "image":
            context["image"] = img
        elif needs == "mean":
            context["mean"] = F.luminance_mean_through(img, pending)
        table = op.luts(rec, channels, top, context)  # type: ignore[attr-defined]
        # Compose: the new table applied after the pending one.
        pending = table if pending is None else F.compose_luts(table, pending)
    if pending is None or F.is_identity_luts(pending):
        return img if inplace else img.copy()  # never hand back the caller's own array
    return F.apply_luts(img, pending, inplace=inplace)


# --------------------------------------------------------------------------- text form

_ITEM = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*(?:=\s*(.*?)|\((.*)\))?\s*$", re.S)


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets and parentheses."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
            if depth < 0:
                raise PipelineError(f"unbalanced ')' or ']' in --ops '{text}'")
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise PipelineError(f"unbalanced '(' or '[' in --ops '{text}'")
    parts.append("".join(cur))
    return parts


def _scalar(text: str) -> Any:
    import yaml

    text = text.strip()
    if text == "":
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_ops(text: str) -> Pipeline:
    """Parse the ``--ops`` text form (see the module docstring)."""
    ops: list[Op] = []
    items = [p for p in _split_top(text) if p.strip()]
    if not items:
        raise PipelineError("--ops is empty; give at least one op (see --list-ops)")
    for item in items:
        m = _ITEM.match(item)
        if not m:
            raise PipelineError(
                f"cannot parse op '{item.strip()}': write name, name=value or name(key=value, ...)"
            )
        name, value, args = m.group(1), m.group(2), m.group(3)
        from cnncli.augment.transforms import op_class

        cls = op_class(name)
        cfg: dict[str, Any] = {}
        if value is not None:
            if cls.primary is None:
                raise PipelineError(f"op '{cls.name}' takes no value; use {cls.name}(key=value)")
            cfg[cls.primary] = _scalar(value)
        if args is not None and args.strip():
            for arg in _split_top(args):
                if "=" not in arg:
                    raise PipelineError(f"op '{cls.name}': expected key=value, got '{arg.strip()}'")
                key, val = arg.split("=", 1)
                if key.strip() in cfg:
                    raise PipelineError(
                        f"op '{cls.name}': parameter '{key.strip()}' is given twice")
                cfg[key.strip()] = _scalar(val)
        ops.append(make_op(cls.name, cfg))
    return Pipeline(ops)


def preset(name: str) -> Pipeline:
    """A named preset (``digits``, ``photos``, ``default``)."""
    key = name.strip().lower()
    if key not in PRESETS:
        import difflib

        hint = difflib.get_close_matches(key, list(PRESETS), n=1)
        tip = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise PipelineError(f"unknown preset '{name}'{tip}; presets: {', '.join(PRESETS)}")
    return parse_ops(PRESETS[key])


def resolve_pipeline(spec: str | Path | Pipeline) -> Pipeline:
    """A pipeline from a preset name, a YAML file path or ``--ops`` text (in that order).

    This is what ``cnn train --augment PIPELINE`` accepts.
    """
    if isinstance(spec, Pipeline):
        return spec
    text = str(spec).strip()
    if text.lower() in PRESETS:
        return preset(text)
    if text.lower().endswith((".yaml", ".yml")) or Path(text).is_file():
        return Pipeline.load(text)
    return parse_ops(text)
