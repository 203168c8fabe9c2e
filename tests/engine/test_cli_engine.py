"""``cnn gradcheck`` and ``cnn time`` through the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import cnncli.cli.main  # noqa: F401  (registers the commands)
from cnncli.cli.app import app

SPEC = """name: small
input: [8, 8, 2]
layers:
  - conv: {filters: 3, kernel: 3, padding: same, activation: tanh}
  - pool: {type: max, size: 2}
  - batchnorm
  - flatten
  - dense: {units: 4, activation: softmax}
"""


@pytest.fixture
def spec_file(tmp_path):
    p = tmp_path / "small.yaml"
    p.write_text(SPEC)
    return p


def test_gradcheck_passes_and_reports_every_tensor(spec_file):
    result = CliRunner().invoke(app, ["gradcheck", str(spec_file), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    names = {t["name"] for t in data["tensors"]}
    assert names == {"input", "conv1.weight", "conv1.bias", "batchnorm1.weight",
                     "batchnorm1.bias", "dense1.weight", "dense1.bias"}
    assert data["ok"] and data["max_rel_error"] < 1e-5


def test_gradcheck_fails_with_exit_1_when_backward_is_wrong(spec_file, monkeypatch):
    from cnncli.layers.core import Dense

    real = Dense.backward

    def wrong(self, node, dy, cache, state, grads):
        dx = real(self, node, dy, cache, state, grads)
        grads["weight"] = grads["weight"] * 1.01  # a 1% error in one gradient
        return dx

    monkeypatch.setattr(Dense, "backward", wrong)
    result = CliRunner().invoke(app, ["gradcheck", str(spec_file)])
    assert result.exit_code == 1
    assert "dense1.weight" in result.stderr
    assert "FAIL" in result.stdout


def test_time_reports_each_layer(spec_file):
    result = CliRunner().invoke(app, ["time", str(spec_file), "--batch", "4", "--iterations",
                                      "2", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["name"] for r in data["layers"]] == ["conv1", "pool1", "batchnorm1", "flatten1",
                                                   "dense1"]
    assert all(r["forward_ms"] >= 0 and r["backward_ms"] >= 0 for r in data["layers"])
    assert data["images_per_second"] > 0


def test_time_names_the_conv_a_fused_pool_runs_in(tmp_path):
    p = tmp_path / "fused.yaml"
    p.write_text("input: [16, 16, 16]\nlayers:\n"
                 "  - conv: {filters: 16, kernel: 3, padding: same, activation: relu}\n"
                 "  - pool: {type: max, size: 2}\n  - flatten\n  - dense: {units: 2}\n")
    result = CliRunner().invoke(app, ["time", str(p), "--batch", "2", "--iterations", "1",
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)["layers"]}
    assert rows["pool1"]["fused_into"] == "conv1" and rows["pool1"]["forward_ms"] == 0
    assert rows["conv1"]["fused_into"] is None and rows["conv1"]["forward_ms"] > 0
    table = CliRunner().invoke(app, ["time", str(p), "--batch", "2", "--iterations", "1"])
    assert "in conv1" in table.stdout


def test_gradcheck_bad_spec_is_exit_2(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ninput: [4, 4, 1]\nlayers:\n  - covn: {filters: 2}\n")
    result = CliRunner().invoke(app, ["gradcheck", str(p)])
    assert result.exit_code == 2
    assert "bad.yaml:4" in result.stderr and "did you mean 'conv'" in result.stderr


def test_gradcheck_warns_when_batchnorm_sees_too_few_values(tmp_path):
    p = tmp_path / "bn.yaml"
    p.write_text("name: bn\ninput: [1, 1, 4]\nlayers:\n  - batchnorm\n  - flatten\n"
                 "  - dense: {units: 2}\n")
    result = CliRunner().invoke(app, ["gradcheck", str(p), "--batch", "2", "--mode", "eval"])
    assert result.exit_code == 0 and "warning" not in result.stderr
    result = CliRunner().invoke(app, ["gradcheck", str(p), "--batch", "2"])
    assert "only 2 in 'batchnorm1'" in result.stderr
