"""Augmentation ops: declared parameters, random parameter sampling, and application.

Each op is a class registered under a name in :data:`OPS`. An instance holds its configuration
(validated parameters with defaults, plus ``p``, the probability that it applies). Randomness
lives only in :meth:`Op.sample`, which draws the exact parameters for one image from a
``numpy.random.Generator``; :meth:`Op.apply` is deterministic given those parameters and calls
the pure functions in :mod:`cnncli.augment.functional`. Sampled parameters are plain JSON values,
so a run can be recorded in a manifest and replayed exactly.

Ops come in three kinds, which is what lets :class:`~cnncli.augment.pipeline.Pipeline` fuse them:

* ``geometric``: a 3x3 output -> input matrix (:meth:`GeometricOp.matrix`); consecutive
  geometric ops become one warp, i.e. one resampling of the image.
* ``lut``: a per-channel lookup table (:meth:`LutOp.luts`); consecutive ones compose into one
  table, applied in one pass.
* ``pixel``: anything else (saturation, hue, noise, blur, cutout), applied on its own.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from cnncli.augment import functional as F
from cnncli.errors import CnnError

Shape = tuple[int, int, int]  # (H, W, C)


class PipelineError(CnnError):
    """An unknown op, a bad parameter or a malformed pipeline file (exit code 2)."""


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Param:
    """One op parameter: its type, default, allowed values and meaning.

    ``type`` is one of ``float``, ``int``, ``bool``, ``choice``, ``range`` (two floats
    ``[low, high]``), ``floats`` (a flat list of ``length`` floats, possibly empty) and
    ``matrix`` (``length`` x ``length`` floats, possibly empty).
    """

    name: str
    type: str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    length: int = 0

    def describe(self) -> str:
        """Allowed values, for ``--list-ops`` and error messages."""
        if self.type == "choice":
            return "|".join(self.choices)
        if self.type in ("float", "int", "range"):
            lo = "-inf" if self.low is None else f"{self.low:g}"
            hi = "inf" if self.high is None else f"{self.high:g}"
            what = "two numbers" if self.type == "range" else self.type
            return f"{what} in [{lo}, {hi}]"
        if self.type == "floats":
            return f"[] or {self.length} numbers"
        if self.type == "matrix":
            return f"[] or {self.length}x{self.length} numbers"
        return self.type

    def coerce(self, op: str, value: Any) -> Any:
        """Validate ``value`` and return it in canonical form, or raise :class:`PipelineError`."""

        def bad(why: str = "") -> PipelineError:
            got = repr(value) if not isinstance(value, str) else f"'{value}'"
            msg = f"op '{op}' parameter '{self.name}': expected {self.describe()}, got {got}"
            return PipelineError(msg + (f" ({why})" if why else ""))

        if self.type == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
                return value.lower() in ("true", "yes")
            raise bad()
        if self.type == "choice":
            if isinstance(value, str) and value.lower() in self.choices:
                return value.lower()
            raise bad()
        if self.type in ("float", "int"):
            num = _number(value)
            if num is None or not math.isfinite(num):
                raise bad()
            if self.type == "int":
                if num != int(num):
                    raise bad("not a whole number")
                num = int(num)
            else:
                num = float(num)
            self._check_bounds(num, bad)
            return num
        if self.type == "range":
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise bad()
            nums = [_number(v) for v in value]
            if any(n is None or not math.isfinite(n) for n in nums):
                raise bad()
            lo, hi = float(nums[0]), float(nums[1])  # type: ignore[arg-type]
            if lo > hi:
                raise bad("low > high")
            self._check_bounds(lo, bad)
            self._check_bounds(hi, bad)
            return [lo, hi]
        if self.type == "floats":
            if not isinstance(value, (list, tuple)) or len(value) not in (0, self.length):
                raise bad()
            nums = [_number(v) for v in value]
            if any(n is None or not math.isfinite(n) for n in nums):
                raise bad()
            return [float(n) for n in nums]  # type: ignore[arg-type]
        if self.type == "matrix":
            if not isinstance(value, (list, tuple)) or len(value) not in (0, self.length):
                raise bad()
            rows = []
            for row in value:
                if not isinstance(row, (list, tuple)) or len(row) != self.length:
                    raise bad()
                nums = [_number(v) for v in row]
                if any(n is None or not math.isfinite(n) for n in nums):
                    raise bad()
                rows.append([float(n) for n in nums])  # type: ignore[arg-type]
            return rows
        raise AssertionError(f"unknown parameter type {self.type}")

    def _check_bounds(self, num: float, bad: Any) -> None:
        if (self.low is not None and num < self.low) or (self.high is not None and num > self.high):
            raise bad("out of range")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


P_PARAM = Param("p", "float", 1.0, "probability that the op is applied to an image", 0.0, 1.0)
INTERPOLATION = Param(
    "interpolation", "choice", "bilinear", "resampling filter", choices=F.INTERPOLATIONS
)
BORDER = Param(
    "border",
    "choice",
    "constant",
    "what fills areas from outside the image: constant (fill), edge (repeat), reflect (mirror)",
    choices=tuple(F.BORDERS),
)
FILL = Param("fill", "int", 0, "grey level 0..255 for border=constant (alpha becomes 0)", 0, 255)


# --------------------------------------------------------------------------- op base classes

OPS: dict[str, type[Op]] = {}


def register(cls: type[Op]) -> type[Op]:
    """Class decorator: add an op to :data:`OPS` under ``cls.name``."""
    if cls.name in OPS:
        raise ValueError(f"op {cls.name!r} registered twice")
    OPS[cls.name] = cls
    return cls


class Op:
    """Base class. Subclasses set the class attributes and implement ``sample``/``apply``."""

    name: ClassVar[str]
    kind: ClassVar[str]  # "geometric", "lut" or "pixel"
    summary: ClassVar[str]
    params: ClassVar[tuple[Param, ...]]
    primary: ClassVar[str | None] = None  # the parameter that "op=value" sets
    default_p: ClassVar[float] = 1.0
    changes_size: ClassVar[bool] = False

    def __init__(self, p: Any = None, **config: Any) -> None:
        spec = {prm.name: prm for prm in self.params}
        unknown = [k for k in config if k not in spec]
        if unknown:
            names = [*spec, "p"]
            hint = difflib.get_close_matches(unknown[0], names, n=1)
            tip = f" (did you mean '{hint[0]}'?)" if hint else f"; it takes {', '.join(names)}"
            raise PipelineError(f"op '{self.name}' has no parameter '{unknown[0]}'{tip}")
        self.p: float = P_PARAM.coerce(self.name, self.default_p if p is None else p)
        self.config: dict[str, Any] = {}
        for prm in self.params:
            value = config.get(prm.name, prm.default)
            self.config[prm.name] = prm.coerce(self.name, value)
        self.validate()

    def validate(self) -> None:
        """Cross-parameter checks (raise :class:`PipelineError`)."""

    def __getitem__(self, key: str) -> Any:
        return self.config[key]

    def to_dict(self) -> dict[str, Any]:
        """``{"op": name, "p": p, **every parameter}`` (defaults included: files are explicit)."""
        return {"op": self.name, "p": self.p, **{k: _plain(v) for k, v in self.config.items()}}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Op) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "op")
        return f"{type(self).__name__}({args})"

    def short(self) -> str:
        """Compact text form that :func:`~cnncli.augment.pipeline.parse_ops` reads back."""
        changed = {
            prm.name: self.config[prm.name]
            for prm in self.params
            if self.config[prm.name] != prm.coerce(self.name, prm.default)
        }
        if self.p != self.default_p:
            changed = {"p": self.p, **changed}
        if not changed:
            return self.name
        return f"{self.name}({', '.join(f'{k}={_short_value(v)}' for k, v in changed.items())})"

    # -- behaviour
    def sample(self, rng: np.random.Generator, shape: Shape) -> dict[str, Any]:
        """Draw the exact parameters for one image of ``shape``; plain JSON values."""
        return {}

    def apply(self, img: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
        """Apply with the given sampled parameters (deterministic)."""
        raise NotImplementedError

    def output_shape(self, params: Mapping[str, Any], shape: Shape) -> Shape:
        return shape


class GeometricOp(Op):
    """An op that is an affine map; pipelines fuse runs of them into one warp."""

    kind = "geometric"

    def matrix(self, params: Mapping[str, Any], shape: Shape) -> np.ndarray:
        """3x3 output -> input matrix for an input of ``shape`` (see ``functional``)."""
        raise NotImplementedError

    def warp_settings(self) -> dict[str, Any]:
        """Settings this op needs from the warp it joins (interpolation, border, fill)."""
        return {k: self.config[k] for k in ("interpolation", "border", "fill") if k in self.config}

    def apply(self, img: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
        shape = tuple(img.shape)
        out = self.output_shape(params, shape)  # type: ignore[arg-type]
        cfg = {"interpolation": "bilinear", "border": "edge", "fill": 0, **self.warp_settings()}
        return F.warp_affine(img, self.matrix(params, shape), out[:2], **cfg)  # type: ignore[arg-type]


class LutOp(Op):
    """A per-channel value map; pipelines compose runs of them into one lookup table.

    ``needs`` says what :meth:`luts` reads: ``"nothing"``, ``"mean"`` (the luminance mean of
    the image as it is when the op runs, which fusion computes exactly from histograms) or
    ``"image"`` (the pixels themselves, which ends the fused run before the op).
    """

    kind = "lut"
    needs: ClassVar[str] = "nothing"

    def luts(
        self, params: Mapping[str, Any], channels: int, top: int, context: Mapping[str, Any]
    ) -> np.ndarray:
        """(channels, top + 1) int64 table; ``context`` holds ``mean`` or ``image``."""
        raise NotImplementedError

    def apply(self, img: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
        context: dict[str, Any] = {}
        if self.needs == "mean":
            context["mean"] = F.luminance_mean(img)
        elif self.needs == "image":
            context["image"] = img
        table = self.luts(params, img.shape[2], F.maxval(img), context)
        return F.apply_luts(img, table)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _short_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if float(f"{value:g}") == value else repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_short_value(v) for v in value) + "]"
    return str(value)


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """``rng.uniform(low, high)`` at a third of the cost: NumPy computes exactly
    ``low + (high - low) * rng.random()`` in doubles, so the draws are the same numbers."""
    return low + (high - low) * rng.random() if high > low else float(low)


# --------------------------------------------------------------------------- geometric ops


@register
class Flip(GeometricOp):
    name = "flip"
    summary = "mirror the image (reflection); horizontal by default"
    params = (
        Param("axis", "choice", "horizontal", "mirror axis", choices=("horizontal", "vertical")),
    )
    primary = "axis"
    default_p = 0.5

    def matrix(self, params: Mapping[str, Any], shape: Shape) -> np.ndarray:
        return F.flip_matrix(shape, self["axis"])

    def apply(self, img: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
        return F.hflip(img) if self["axis"] == "horizontal" else F.vflip(img)


@register
class Rotate(GeometricOp):
    name = "rotate"
    summary = "rotate by a uniform random angle in [-limit, limit] degrees about the centre"
    params = (
        Param("limit", "float", 15.0, "largest rotation, degrees (counter-clockwise > 0)", 0, 180),
        INTERPOLATION,
        BORDER,
        FILL,
    )
    primary = "limit"

    def sample(self, rng: np.random.Generator, shape: Shape) -> dict[str, Any]:
        return {"angle": _uniform(rng, -self["limit"], self["limit"])}

    def matrix(self, params: Mapping[str, Any], shape: Shape) -> np.ndarray:
        return F.rotation_matrix(shape, params["angle"])


@register
class Shift(GeometricOp):
    name = "shift"
    summary = "translate by up to limit x width and limit x height pixels (translation)"
    params = (
        Param("limit", "float", 0.1, "largest shift, as a fraction of width/height", 0, 1),
        INTERPOLATION,
        BORDER,
        FILL,
    )
    primary = "limit"

    def sample(self, rng: np.random.Generator, shape: Shape) -> dict[str, Any]:
        lim = self["limit"]
        return {
            "dx": _uniform(rng, -lim, lim) * shape[1],
            "dy": _uniform(rng, -lim, lim) * shape[0],
        }

    def matrix(self, params: Mapping[str, Any], shape: Shape) -> np.ndarray:
        return F.shift_matrix(params["dx"], params["dy"])


@register
class Scale(GeometricOp):
    name = "scale"
    summary = "zoom in or out about the centre by a factor in [1 - limit, 1 + limit] (scaling)"
    params = (
        Param("limit", "float", 0.1, "largest relative zoom", 0, 0.95),
        INTERPOLATION,
        BORDER,
        FILL,
    )
    primary = "limit"

    def sample(self, rng: np.random.Generator, shape: Shape) -> dict[str, Any]:
        return {"factor": _uniform(rng, 1.0 - self["limit"], 1.0 + self["limit"])}

    def matrix(self, params: Mapping[str, Any], shape: Shape) -> np.ndarray:
        return F.scale_matrix(shape, params["factor"])


def _box_size(op: Op, shape: Shape) -> tuple[int, int]:
    h, w = shape[0], shape[1]
    ch = op["height"] or max(1, round(h * op["size"]))
    cw = op["width"] or max(1, round(w * op["size"]))
    return min(ch, h), min(cw, w)


@register
class Crop(GeometricOp):
    name = "crop"
    summary = "random patch of size x each side, or height x width pixels (patch extraction)"
    params = (
        Param("size", "float", 0.8, "patch side as a fraction of the image side", 0.01, 1.0),
        Param("height", "int", 0, "patch height in pixels (0: use size)", 0, None),
        Param("width", "int", 0, "patch width in pixels (0: use size)", 0, None),
    )
    primary = "size"
    changes_size = True

    def sample(self, rng: np.random.Generator, shape: Shape) -> dict[str, Any]:
        ch, cw = _box_size(self, shape)
        top = int(rng.integers(0, shape[0] - ch + 1))
        left = int(rng.integers(0, shape[1] - cw + 1))
        return {"top": top, "left": left, "height": ch, "width": cw}

    def output_shape(self, params: Mapping[str, Any], shape: Shape) -> Shape:
        return (params["height"], params["width"], shape[2])

    def matrix(self, params: Mapping[str, Any], shape: Shape) -> np.ndarray:
        return F.translation(params["left"], params["top"])

    def apply(self, img: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
        return F.crop(img, params["top"], params["left"], params["height"], params["width"])


def _out_size(op: Op) -> tuple[int, int]:
    return (op["height"] or op["size"], op["width"] or op["size"])


@register
class RandomResizedCrop(GeometricOp):
    name = "random_resized_crop"
    summary = (
        "crop a random area fraction and aspect ratio, resize to size x size (Inception / "
        "torchvision style; AlexNet-like 224 patches)"
    )
    params = (
        Param("size", "int", 224, "output side in pixels", 1, 65535),
        Param("height", "int", 0, "output height (0: use size)", 0, 65535),
        Param("width", "int", 0, "output width (0: use size)", 0, 65535),
        Param("area", "range", [0.08, 1.0], "crop area as a fraction of the image area", 0.0001, 1),
        Param("ratio", "range", [0.75, 4 / 3], "crop aspect ratio (width / height)", 0.01, 100),
        INTERPOLATION,
    )
    primary = "size"
    changes_size = True

    def sample(self, rng: np.random.Generator, shape: Shape) -> dict[str, Any]:
        h, w = shape[0], shape[1]
        total = h * w
        area_lo, area_hi = self["area"]
        lo, hi = (math.log(r) for r in self["ratio"])
        for _ in range(10):
            target = total * _uniform(rng, area_lo, area_hi)
            aspect = math.exp(_uniform(rng, lo, hi))
            cw = round(math.sqrt(target * aspect))
            ch = round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(rng.integers(0, h - ch + 1))
                left = int(rng.integers(0, w - cw + 1))
                return {"top": top, "left": left, "height": ch, "width": cw}
        # Fallback (as torchvision): the largest centred box with the ratio clamped to range.
        in_ratio = w / h
        rmin, rmax = self["ratio"]
        if in_ratio < rmin:
            cw, ch = w, max(1, round(w / rmin))
        elif in_ratio > rmax:
            ch, cw = h, max(1, round(h * rmax))
        else:
            cw, ch = w, h
        return {"top": (h - ch) // 2, "left": (w - cw) // 2, "height": ch, "width": cw}

    def output_shape(self, params: Mapping[str, Any], shape: Shape) -> Shape:
        oh, ow = _out_size(self)
        return (oh, ow, shape[2])

    def matrix(self, params: Mapping[str, Any], shape: Shape) -> np.ndarray:
        oh, ow = _out_size(self)
        p = params
        return F.resized_crop_matrix(p["top"], p["left"], p["height"], p["width"], oh, ow)


@register
class Resize(GeometricOp):
    name = "resize"
    summary = "resize to size x size, or height x width pixels (not random)"
    params = (
        Param("size", "int", 224, "output side in pixels", 1, 65535),
        Param("height", "int", 0, "output height (0: use size)", 0, 65535),
        Param("width", "int", 0, "output width (0: use size)", 0, 65535),
        INTERPOLATION,
    )
    primary = "size"
    changes_size = True

    def output_shape(self, params: Mapping[str, Any], shape: Shape) -> Shape:
        oh, ow = _out_size(self)
        return (oh, ow, shape[2])

    def matrix(self, params: Mapping[str, Any], shape: Shape) -> np.ndarray:
        oh, ow = _out_size(self)
        return F.resized_crop_matrix(0, 0, shape[0], shape[1], oh, ow)


# --------------------------------------------------------------------------- lookup-table ops


@register
class Brightness(LutOp):
    name = "brightness"
    summary = "multiply intensities by a factor in [1 - limit, 1 + limit] (colour intensity)"
    params = (Param("limit", "float", 0.2, "largest relative change", 0, 1),)
    primary = "limit"

    def sample(self, rng: np.random.Generator, shape: Shape) -> dict[str, Any]:
        return {"factor": _uniform(rng, 1.0 - self["limit"], 1.0 + self["limit"])}

    def luts(self, params, channels, top, context):  # type: ignore[no-untyped-def]
        return F.colour_luts(channels, F.brightness_lut(params["factor"], top))


@register
class Contrast(LutOp):
    name = "contrast"
    summary = "scale distances from the mean intensity by a factor in [1 - limit, 1 + limit]"
    params = (Param("limit", "float", 0.2, "largest relative change", 0, 1),)
    primary = "limit"
    needs = "mean"

    def sample(self, rng: np.random.Generator, shape: Shape) -> dict[str, Any]:
        return {"factor": _uniform(rng, 1.0 - self["limit"], 1.0 + self["limit"])}

    def luts(self, params, channels, top, context):  # type: ignore[no-untyped-def]
        return F.colour_luts(channels, F.contrast_lut(params["factor"], context["mean"], top))


@register
class Pca(LutOp):
    name = "pca"
    summary = (
        "AlexNet PCA colour augmentation: shift RGB along the covariance eigenvectors by "
        "alpha x sqrt(eigenvalue), alpha ~ N(0, sigma) per component per image"
    )
    params = (
        Param("sigma", "float", 0.1, "standard deviation of alpha", 0, 10),
        Param(
            "eigen",
            "choice",
            "image",
            "eigen-decomposition of each image's own pixels, or of the whole input folder "
            "(computed once before the run and saved with the pipeline)",
            choices=("image", "folder"),
        ),
        Param("eigvals", "floats", [], "folder eigenvalues (filled in by the run)", length=3),
        Param("eigvecs", "matrix", [], "folder eigenvectors as columns (filled in)", length=3),
    )
    primary = "sigma"

    @property
    def needs(self) -> str:  # type: ignore[override]
        return "image" if self["eigen"] == "image" else "nothing"

    def validate(self) -> None:
        if bool(self["eigvals"]) != bool(self["eigvecs"]):
            raise PipelineError("op 'pca': give both 'eigvals' and 'eigvecs', or neither")

    def sample(self, rng: np.random.Generator, shape: Shape) -> dict[str, Any]:
        return {"alpha": [float(a) for a in rng.normal(0.0, self["sigma"], 3)]}

    def eigen(self, context: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        if self["eigen"] == "image":
            return F.image_eigen(context["image"])
        if not self["eigvals"]:
            raise PipelineError(
                "op 'pca' with eigen=folder needs eigvals/eigvecs: run it through `cnn augment` "
                "(which computes them over the input folder) or set them in the pipeline"
            )
        return np.array(self["eigvals"]), np.array(self["eigvecs"])

    def luts(self, params, channels, top, context):  # type: ignore[no-untyped-def]
        if channels < 3:
            return F.identity_luts(channels, top)
        vals, vecs = self.eigen(context)
        offsets = F.pca_shift(vals, vecs, params["alpha"]) * (top / 255.0)
        return F.colour_luts(channels, [F.offset_lut(float(o), top) for o in offsets])


# --------------------------------------------------------------------------- pixel ops


class PixelOp(Op):
    kind = "pixel"


@register
class Saturation(PixelOp):
    name = "saturation"
    summary = "blend with the grey image by a factor in [1 - limit, 1 + limit] (colour balance)"
    params = (Param("limit", "float", 0.2, "largest relative change", 0, 1),)
    primary = "limit"

    def sample(self, rng: np.random.Generator, shape: Shape) -> dict[str, Any]:
        return {"factor": _uniform(rng, 1.0 - self["limit"], 1.0 + self["limit"])}

    def apply(self, img: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
        return F.adjust_saturation(img, params["factor"])


@register
class Hue(PixelOp):
    name = "hue"
    summary = "rotate the hue by up to limit turns (0.5 = opposite colour)"
    params = (Param("limit", "float", 0.05, "largest hue shift, in turns", 0, 0.5),)
    primary = "limit"

    def sample(self, rng: np.random.Generator, shape: Shape) -> dict[str, Any]:
        return {"shift": _uniform(rng, -self["limit"], self["limit"])}

    def apply(self, img: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
        return F.adjust_hue(img, params["shift"])


@register
class Noise(PixelOp):
    name = "noise"
    summary = "add Gaussian noise of standard deviation sigma grey levels"
    params = (
        Param("sigma", "float", 5.0, "noise standard deviation, 0..255 units", 0, 255),
        Param("per_channel", "bool", True, "independent noise per colour channel"),
    )
    primary = "sigma"

    def sample(self, rng: np.random.Generator, shape: Shape) -> dict[str, Any]:
        return {"seed": int(rng.integers(0, 2**32))}

    def apply(self, img: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
        return F.gaussian_noise(img, self["sigma"], params["seed"], per_channel=self["per_channel"])


@register
class Blur(PixelOp):
    name = "blur"
    summary = "Gaussian blur with a standard deviation drawn uniformly from [0, sigma] pixels"
    params = (Param("sigma", "float", 1.0, "largest blur standard deviation, pixels", 0, 50),)
    primary = "sigma"

    def sample(self, rng: np.random.Generator, shape: Shape) -> dict[str, Any]:
        return {"sigma": _uniform(rng, 0.0, self["sigma"])}

    def apply(self, img: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
        return F.gaussian_blur(img, params["sigma"])


@register
class Cutout(PixelOp):
    name = "cutout"
    summary = "paint holes of size x the shorter side at random centres (DeVries & Taylor 2017)"
    params = (
        Param("size", "float", 0.25, "hole side as a fraction of the shorter image side", 0, 1),
        Param("holes", "int", 1, "number of holes", 1, 100),
        FILL,
    )
    primary = "size"

    def sample(self, rng: np.random.Generator, shape: Shape) -> dict[str, Any]:
        h, w = shape[0], shape[1]
        side = max(1, round(min(h, w) * self["size"]))
        boxes = []
        for _ in range(self["holes"]):
            cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
            boxes.append([cy - side // 2, cx - side // 2, side, side])
        return {"boxes": boxes}

    def apply(self, img: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
        return F.cutout(img, params["boxes"], self["fill"])


# --------------------------------------------------------------------------- lookup helpers


def op_class(name: str) -> type[Op]:
    """The registered class for ``name``, or a :class:`PipelineError` suggesting the closest."""
    key = name.strip().lower().replace("-", "_")
    if key in OPS:
        return OPS[key]
    hint = difflib.get_close_matches(key, list(OPS), n=1, cutoff=0.5)
    tip = f" (did you mean '{hint[0]}'?)" if hint else ""
    raise PipelineError(f"unknown op '{name}'{tip}; `cnn augment --list-ops` lists them")


def make_op(name: str, config: Mapping[str, Any] | None = None) -> Op:
    """Build an op from its name and a parameter mapping (``p`` included)."""
    cfg = dict(config or {})
    p = cfg.pop("p", None)
    return op_class(name)(p=p, **cfg)


def describe_ops() -> list[dict[str, Any]]:
    """Every registered op with its parameters, defaults and meaning (for ``--list-ops``)."""
    rows = []
    for name, cls in OPS.items():
        params = [
            {
                "name": "p",
                "default": cls.default_p,
                "allowed": P_PARAM.describe(),
                "help": P_PARAM.help,
            }
        ]
        for prm in cls.params:
            params.append(
                {
                    "name": prm.name,
                    "default": prm.default,
                    "allowed": prm.describe(),
                    "help": prm.help,
                }
            )
        rows.append(
            {
                "op": name,
                "kind": cls.kind,
                "summary": cls.summary,
                "shorthand": f"{name}=<{cls.primary}>" if cls.primary else name,
                "params": params,
            }
        )
    return rows
