"""EngineOptions: every switch and size limit of the engine's kernel choice, in one value.

A model is built with one ``EngineOptions`` (the default is what the engine does best);
its plan chooses each layer's kernel path with them, and the ops receive them explicitly.
Tests build the twin of a fast path by passing options (``EngineOptions(winograd=False)``)
rather than by changing module globals, so two models with different options can run side
by side in one process.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class EngineOptions:
    """Which fast paths the engine may take, and the sizes that steer them."""

    #: Winograd F(2x2, 3x3) for float32 3x3 stride-1 convs: forward, input gradient and
    #: weight gradient (each may be switched off alone; off means im2col + GEMM).
    winograd: bool = True
    winograd_dx: bool = True
    winograd_dw: bool = True
    #: Both channel counts must reach this for Winograd's 16 small GEMMs to pay.
    winograd_min_channels: int = 16
    #: Winograd needs at least this many 2x2 output tiles per image (fewer: the weight
    #: transforms and the 16 skinny GEMMs cost more than im2col + one GEMM saves).
    winograd_min_tiles: int = 4
    #: ... and the weight gradient at least this many (its [16, C, K] sums and their
    #: inverse transform cost more on small maps: ResNet's 4x4 stage, timed by autotune).
    winograd_dw_min_tiles: int = 16
    #: Target size of one chunk's transformed input V [16, C, tiles].
    winograd_chunk_bytes: int = 1 << 19
    #: Tiles per chunk of the Winograd weight gradient (its 16 GEMMs contract over them).
    winograd_dw_tiles: int = 128
    #: Stride-1 convs with at most this many output channels run the direct kernels.
    direct_max_channels: int = 8
    #: ... and their weight gradient too when a filter has at most this many taps.
    direct_max_taps: int = 32
    #: Stride-1 convs whose per-image column matrix and weight matrix each have at most
    #: this many entries run per-image im2col + one batched matmul (LeNet's C1 and C3; not
    #: ResNet's wide layers on small maps, whose per-image GEMMs would be tiny).
    batched_max_cols: int = 20000
    #: Target size of one chunk's column matrix on the im2col + GEMM path.
    chunk_bytes: int = 1 << 20
    #: Depthwise (and channel-multiplier) convs run direct kernels instead of grouped GEMMs.
    depthwise: bool = True
    #: Kernel taps that only ever read padding (3x3 convs on 1x1 maps) are cut away.
    crop_taps: bool = True
    #: Apply a conv's activation derivative inside the pass that lays dy out for the GEMMs.
    fuse_act_grad: bool = True
    #: Plan steps that fuse layers: conv + ReLU + 2x2 max pool (Winograd output pass),
    #: batchnorm + ReLU/ReLU6, and a residual add with its ReLU.
    fuse_relu_maxpool: bool = True
    fuse_bn_act: bool = True
    fuse_add_act: bool = True
    #: In evaluation, a conv followed by batchnorm (and its ReLU/ReLU6) runs as one conv
    #: whose weights and bias have the normalisation folded in.
    fold_bn: bool = True
    #: Time each candidate path once per layer shape when the plan is made (cached on disk).
    autotune: bool = False

    def with_(self, **changes) -> EngineOptions:
        """A copy with some fields changed (``opts.with_(winograd=False)``)."""
        return replace(self, **changes)

    def key(self) -> tuple:
        """Everything that can change a kernel choice, for caches."""
        return tuple(getattr(self, f.name) for f in fields(self))


#: What the engine does when nothing else is asked.
DEFAULT = EngineOptions()


def twin_options() -> EngineOptions:
    """The plain im2col + GEMM engine with no fast path and no fusion: the twin that tests
    compare the fast paths with (it is itself checked against ops.reference)."""
    return EngineOptions(winograd=False, winograd_dx=False, winograd_dw=False,
                         direct_max_channels=0, direct_max_taps=0, batched_max_cols=0,
                         depthwise=False, crop_taps=False, fuse_act_grad=False,
                         fuse_relu_maxpool=False, fuse_bn_act=False, fuse_add_act=False,
                         fold_bn=False)
