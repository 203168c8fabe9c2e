"""The shipped architectures (architectures/*.yaml) against their published numbers.

Every YAML file there must have an entry in ``EXPECTED`` (a new file without one fails the
suite). For each: trainable parameters equal the published figure exactly, batchnorm
running statistics are the non-trainable count, multiply-adds are within 1% of the
reference table (../shared/reference/README.md), and every conv / batchnorm / pool / dense
row matches torchinfo's per-layer table (output shape and parameters) where one exists.
Receptive fields are checked against the published per-layer figures.

All of it is computed by ``cnn shapes`` without allocating weights; two subprocess tests
hold it to that (peak memory, and no numba import).
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from cnncli.shapes import shapes

ROOT = Path(__file__).resolve().parent.parent
ARCH = ROOT / "architectures"
ARCH_FILES = sorted(ARCH.glob("*.yaml"))

IMAGENET = (224, 224, 3)

# stem -> published figures. "input" is where the MACs are measured (224x224x3 for the
# ImageNet models, the network's own input otherwise); "torchinfo" names the reference
# table torchinfo/<name>_layers.json that the per-layer test compares with.
# Non-trainable = batchnorm running mean + variance, 2 values per channel (ResNet-18 9,600
# and ResNet-50 53,120 from the reference README; GoogLeNet and MobileNetV2 are the sums of
# the BatchNorm2d rows in their torchinfo tables, which ``test_non_trainable_is_bn_stats``
# re-derives).
EXPECTED: dict[str, dict] = {
    "lenet5": dict(
        trainable=61_706,
        non_trainable=0,
        macs=416_520,
        input=(32, 32, 1),
        torchinfo="lenet5_classic_32in",
    ),
    # Same arithmetic as lenet5 (28x28 padded to 32x32 by C1), so the same figures.
    "lenet5_modern": dict(
        trainable=61_706,
        non_trainable=0,
        macs=416_520,
        input=(28, 28, 1),
        torchinfo="lenet5_modern",
    ),
    "alexnet": dict(
        trainable=61_100_840, non_trainable=0, macs=714_188_480, input=IMAGENET, torchinfo="alexnet"
    ),
    "vgg16": dict(
        trainable=138_357_544,
        non_trainable=0,
        macs=15_470_264_320,
        input=IMAGENET,
        torchinfo="vgg16",
    ),
    "resnet18": dict(
        trainable=11_689_512,
        non_trainable=9_600,
        macs=1_814_073_344,
        input=IMAGENET,
        torchinfo="resnet18",
    ),
    "resnet50": dict(
        trainable=25_557_032,
        non_trainable=53_120,
        macs=4_089_184_256,
        input=IMAGENET,
        torchinfo="resnet50",
    ),
    "googlenet": dict(
        trainable=6_624_904,
        non_trainable=14_560,
        macs=1_498_376_192,
        input=IMAGENET,
        torchinfo="googlenet",
    ),
    "mobilenet_v2": dict(
        trainable=3_504_872,
        non_trainable=34_112,
        macs=300_774_272,
        input=IMAGENET,
        torchinfo="mobilenet_v2",
    ),
    # README: "1,116,970 params; 25.53 M MACs" (3x3 same convs at 32x32x3, no bias terms).
    "cifar_cnn": dict(
        trainable=1_116_970,
        non_trainable=0,
        macs=25_528_832,
        input=(32, 32, 3),
        torchinfo="cifar_cnn",
    ),
}


# torchinfo 1.8.0 tables, copied from shared/reference (see tests/data/reference/README.md)
TORCHINFO = Path(__file__).parent / "data" / "reference" / "torchinfo"



@cache
def report(stem: str) -> dict:
    return shapes(ARCH / f"{stem}.yaml", input_shape=EXPECTED[stem]["input"])


def rows_by_name(stem: str) -> dict[str, dict]:
    return {r["name"]: r for r in report(stem)["layers"]}


# -- every file, its totals ------------------------------------------------------------------


def test_every_expected_entry_has_a_file():
    assert {p.stem for p in ARCH_FILES} >= set(EXPECTED), "EXPECTED names a missing file"


@pytest.mark.parametrize("path", ARCH_FILES, ids=lambda p: p.stem)
def test_has_expected_figures_and_header(path):
    assert path.stem in EXPECTED, f"add the published figures of {path.name} to EXPECTED"
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# "), f"{path.name} must start with a comment saying what it is"


@pytest.mark.parametrize("path", ARCH_FILES, ids=lambda p: p.stem)
def test_parameter_counts(path):
    want = EXPECTED[path.stem]
    totals = report(path.stem)["totals"]
    assert totals["trainable_params"] == want["trainable"]
    assert totals["non_trainable_params"] == want["non_trainable"]
    assert totals["params"] == want["trainable"] + want["non_trainable"]


@pytest.mark.parametrize("path", ARCH_FILES, ids=lambda p: p.stem)
def test_published_architectures_resolve_without_warnings(path):
    # The classic nets lose no input to floor(); what floor drops there (ResNet's padding,
    # its 1x1 stride-2 shortcuts' gaps) is reported as notes, not as stderr noise.
    assert report(path.stem)["warnings"] == []


@pytest.mark.parametrize("path", ARCH_FILES, ids=lambda p: p.stem)
def test_training_section_is_a_valid_config(path):
    from cnncli.spec import load_spec
    from cnncli.train.config import TrainConfig, resolve_config

    spec = load_spec(path)
    cfg = resolve_config(spec.training, None, {})
    for key, value in spec.training.items():
        assert getattr(cfg, key) == value
    if path.stem == "cifar_cnn":  # the LeNet-5 default lr 0.05 makes this ReLU net diverge
        assert cfg.lr < TrainConfig().lr


@pytest.mark.parametrize("path", ARCH_FILES, ids=lambda p: p.stem)
def test_macs_within_one_percent(path):
    want = EXPECTED[path.stem]["macs"]
    totals = report(path.stem)["totals"]
    assert abs(totals["macs"] - want) <= 0.01 * want, f"{totals['macs']:,} vs {want:,}"
    assert totals["flops"] == 2 * totals["macs"]


@pytest.mark.parametrize("path", ARCH_FILES, ids=lambda p: p.stem)
def test_spec_input_is_the_reference_input(path):
    """Without --input each file reports at the size its published figures are for."""
    assert tuple(shapes(path)["input"]) == EXPECTED[path.stem]["input"]


# -- per layer, against torchinfo ------------------------------------------------------------

# torchinfo leaf class -> our layer type. Other leaves (activations, dropout, flatten) are
# not compared: they have no parameters and our specs often fuse activations into convs.
TORCH_TYPE = {
    "Conv2d": "conv",
    "BatchNorm2d": "batchnorm",
    "MaxPool2d": "pool",
    "AvgPool2d": "pool",
    "AdaptiveAvgPool2d": "global_pool",
    "Linear": "dense",
}
OUR_TYPES = set(TORCH_TYPE.values())

# Rows of ours with no torchinfo row: MobileNetV2 pools with
# nn.functional.adaptive_avg_pool2d inside forward(), so torchinfo sees no module there.
SKIP_OURS = {"mobilenet_v2": {"avgpool"}}


def torch_leaves(name: str) -> list[dict]:
    """torchinfo's leaf rows we compare, each with its full dotted module path.

    Skipped: AdaptiveAvgPool2d rows whose output equals their input (AlexNet's 6x6 and
    VGG's 7x7 pools are the identity at 224x224, so our specs leave them out; see the
    comments in alexnet.yaml and vgg16.yaml).
    """
    data = json.loads((TORCHINFO / f"{name}_layers.json").read_text(encoding="utf-8"))
    stack: list[str] = []
    out = []
    for row in data["layers"]:
        depth = row["depth"]
        stack[depth:] = [row["var_name"]]
        if not row["leaf"] or row["class"] not in TORCH_TYPE:
            continue
        if row["class"] == "AdaptiveAvgPool2d" and row["input_shape"] == row["output_shape"]:
            continue
        out.append({**row, "path": ".".join(stack[1:])})
    return out


def hwc(torch_shape: list[int], our_type: str) -> list[int]:
    """torchinfo's N x C x H x W (or N x units) as our H x W x C (or units)."""
    if len(torch_shape) == 2:
        return [torch_shape[1]]
    _, c, h, w = torch_shape
    if our_type == "global_pool":  # our global pool gives a vector, torch keeps 1x1 maps
        assert (h, w) == (1, 1)
        return [c]
    return [h, w, c]


def aligned(stem: str) -> list[tuple[dict, dict]]:
    """Our compared rows and torchinfo's, paired by order (same count and types)."""
    skip = SKIP_OURS.get(stem, set())
    ours = [r for r in report(stem)["layers"] if r["type"] in OUR_TYPES and r["name"] not in skip]
    theirs = torch_leaves(EXPECTED[stem]["torchinfo"])
    our_types = [r["type"] for r in ours]
    their_types = [TORCH_TYPE[t["class"]] for t in theirs]
    assert our_types == their_types, "layer sequences differ (count or order of types)"
    return list(zip(ours, theirs))


TORCHINFO_STEMS = [s for s in EXPECTED if EXPECTED[s].get("torchinfo")]
@pytest.mark.parametrize("stem", TORCHINFO_STEMS)
def test_layers_match_torchinfo(stem):
    """Every conv / batchnorm / pool / global pool / dense row, paired in order with
    torchinfo's leaves of those classes: the same output shape (NCHW read as HWC) and the
    same parameter count. Rows skipped: see ``torch_leaves`` and ``SKIP_OURS``."""
    table = json.loads((TORCHINFO / f"{EXPECTED[stem]['torchinfo']}_layers.json").read_text())
    h, w, c = EXPECTED[stem]["input"]
    assert table["input_size"] == [1, c, h, w], "torchinfo measured another input size"
    bad = [
        f"{o['name']} ({o['type']}): ours {o['output']} / {o['params']:,} params, "
        f"torchinfo {t['path']} {hwc(t['output_shape'], o['type'])} / {t['params']:,}"
        for o, t in aligned(stem)
        if o["output"] != hwc(t["output_shape"], o["type"]) or o["params"] != t["params"]
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("stem", TORCHINFO_STEMS)
def test_non_trainable_is_bn_stats(stem):
    """Running mean + var: as many values as batchnorm's gamma + beta in torchinfo."""
    bn = sum(
        t["params"] for t in torch_leaves(EXPECTED[stem]["torchinfo"]) if "BatchNorm" in t["class"]
    )
    assert report(stem)["totals"]["non_trainable_params"] == bn


# Our names read like torchvision's, except that torchvision's `downsample` is our `shortcut`.
TORCHVISION_NAMES = ["resnet18", "resnet50", "googlenet", "mobilenet_v2"]


@pytest.mark.parametrize("stem", TORCHVISION_NAMES)
def test_names_follow_torchvision(stem):
    bad = [
        (o["name"], t["path"])
        for o, t in aligned(stem)
        if o["name"].replace(".shortcut.", ".downsample.") != t["path"]
    ]
    assert not bad, bad


# -- receptive fields ------------------------------------------------------------------------

VGG_RF = {  # reference README (google-research/receptive_field), size in input pixels
    "conv1_1": 3, "pool1": 6, "conv2_1": 10, "pool2": 16, "conv3_1": 24, "conv3_2": 32,
    "pool3": 44, "conv4_1": 60, "conv4_2": 76, "pool4": 100, "conv5_1": 132,
    "conv5_2": 164, "pool5": 212,
}  # fmt: skip
LENET_RF = {"C1": 5, "S2": 6, "C3": 14, "S4": 16, "C5": 32}


def test_vgg16_receptive_fields():
    rows = rows_by_name("vgg16")
    got = {name: rows[f"features.{name}"]["receptive_field"] for name in VGG_RF}
    assert got == VGG_RF
    assert rows["features.pool5"]["jump"] == 32


@pytest.mark.parametrize("stem", ["lenet5", "lenet5_modern"])
def test_lenet5_receptive_fields(stem):
    """Padding (the modern variant's C1 pads 2) moves the window, not its size."""
    rows = rows_by_name(stem)
    assert {name: rows[name]["receptive_field"] for name in LENET_RF} == LENET_RF
    assert rows["C5"]["jump"] == 4


def test_alexnet_pool5_receptive_field():
    """195, as TF-slim's alexnet_v2: the same kernels and strides (11/4, 3/2, 5, 3/2, 3, 3,
    3, 3/2); the two differ only in padding, which shifts the window but not its size."""
    row = rows_by_name("alexnet")["features.pool5"]
    assert (row["receptive_field"], row["jump"]) == (195, 32)


def test_resnet50_receptive_field():
    """v1.5 gives 427 (jump 32) at layer4's output; the published 483 is for v1.

    A residual block's field is the union of its body's and its shortcut's windows; these
    are centred on the same pixel, so the union is the larger one (the body's), which is
    what our calculator takes. Each 3x3 convolution adds 2*jump. The stem (7x7/2, pool
    3x3/2) gives 11 at jump 4. In v1.5 a stage's stride sits in its first 3x3, so that 3x3
    runs at the old jump and every later one at the doubled jump: layer1 11 + 3*8 = 35,
    layer2 35 + 8 + 3*16 = 91, layer3 91 + 16 + 5*32 = 267, layer4 267 + 32 + 2*64 = 427.
    In v1 the stride sits in the 1x1 before it, so all of a stage's 3x3s run at the new
    jump: 35 + 4*16 = 99, 99 + 6*32 = 291, 291 + 3*64 = 483 (google-research's
    resnet_v1_50 figure; TF-slim strides a stage's last unit instead, which gives the same).
    """
    rows = rows_by_name("resnet50")
    last = rows["layer4.2"]
    assert (last["receptive_field"], last["jump"]) == (427, 32)
    assert rows["layer4.2.conv3"]["receptive_field"] == 427
    assert rows["avgpool"]["receptive_field"] is None  # global: every input pixel

    # The same network with v1's stride placement reproduces the published 483.
    spec = yaml.safe_load((ARCH / "resnet50.yaml").read_text(encoding="utf-8"))
    for entry in spec["layers"]:
        stage = entry.get("sequential", {})
        if stage.get("name") in ("layer2", "layer3", "layer4"):
            body = stage["layers"][0]["residual"]["body"]
            body[0]["conv"]["stride"] = body[3]["conv"].pop("stride")
    v1 = {r["name"]: r for r in shapes(spec)["layers"]}
    assert v1["layer4.2"]["output"] == [7, 7, 2048]
    assert (v1["layer4.2"]["receptive_field"], v1["layer4.2"]["jump"]) == (483, 32)


# -- cost of the report itself ---------------------------------------------------------------

_PEAK_RSS = (
    "import resource, subprocess, sys\n"
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def peak_rss_kib(*cmd: str) -> int:
    """Peak RSS (KiB, Linux) of ``cmd``, measured in a fresh parent of its own.

    RUSAGE_CHILDREN is a maximum over every child ever waited for, so each measurement
    gets its own wrapper process whose only child is ``cmd``.
    """
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, *cmd],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is KiB on Linux only")
def test_shapes_resnet50_does_not_allocate_weights():
    """ResNet-50's 25.6 M weights would be 98 MiB in float32; the report stays near a bare
    interpreter with yaml and numpy loaded."""
    baseline = peak_rss_kib(sys.executable, "-c", "import yaml, numpy")
    cli = peak_rss_kib(
        sys.executable, "-m", "cnncli.cli.main", "shapes", "architectures/resnet50.yaml",
        "--format", "json",
    )  # fmt: skip
    assert cli < baseline + 30 * 1024, f"cnn shapes peak {cli} KiB vs baseline {baseline} KiB"


_NO_NUMBA = """
import sys
import cnncli.cli.main
from cnncli.shapes import shapes

shapes("architectures/resnet50.yaml")
sys.argv = ["cnn", "shapes", "architectures/resnet50.yaml", "--format", "json"]
try:
    cnncli.cli.main.main()
except SystemExit as exc:
    assert not exc.code, exc.code
print("numba" in sys.modules, file=sys.stderr)
"""


def test_shapes_does_not_import_numba():
    out = subprocess.run(
        [sys.executable, "-c", _NO_NUMBA],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert json.loads(out.stdout)["totals"]["trainable_params"] == 25_557_032
    assert out.stderr.strip().splitlines()[-1] == "False"
