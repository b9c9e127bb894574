"""`fastsider bench` (fastsider.eval.bench): the evaluation against ground truth, and a tiny end-to-end run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fastsider.cli import main
from fastsider.eval.bench import evaluate_fit
from fit_helpers import TINY_FIT, set_flags

pytestmark = pytest.mark.slow  # a synthetic case (~5 s) and ~5 s per evaluation; the bench run


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    from fastsider.eval.synthetic import generate_cases

    return generate_cases(tmp_path_factory.mktemp("cases"), 1, seed=5)[0]


def test_evaluation_knows_the_truth(case_dir, tmp_path):
    """GT as the prediction scores ~0; the coarse mesh scores the known displacement in the wrinkles."""
    shutil.copy(case_dir / "gt.ply", tmp_path / "mesh.ply")
    coarse, detailed, dist = evaluate_fit(case_dir, tmp_path)
    assert detailed.scan_to_mesh.max < 1e-3 and detailed.wrinkle_normal_deg.mean < 0.5
    disp = np.abs(np.load(case_dir / "gt_displacement.npy"))
    labels = np.load(case_dir / "gt_labels.npy")
    # region-restricted, so compare with the displacement's range rather than one number
    assert 0.3 * disp[labels > 0].mean() < coarse.wrinkle_scan_to_mesh.mean < 1.5 * disp[labels > 0].mean()
    assert coarse.wrinkle_normal_deg.mean > 2.0  # wrinkles tilt the normals by degrees
    assert len(dist["coarse"]) == len(dist["detailed"]) == coarse.scan_to_mesh.count
    regions = {"forehead", "crows_feet", "nasolabial", "bump"}
    assert set(detailed.depth_recovered) == set(coarse.depth_recovered) == regions
    for name in regions:
        assert detailed.depth_recovered[name] == pytest.approx(1.0, abs=0.01), name
        assert coarse.depth_recovered[name] == pytest.approx(0.0, abs=0.02), name


def test_depth_recovered_reads_a_half_depth_mesh_as_half(case_dir, tmp_path):
    """The GT with every vertex moved halfway back to the coarse surface recovers half the depth."""
    from fastsider.eval.metrics import MeshQuery
    from fastsider.io import load_mesh, save_mesh

    gt, coarse = load_mesh(case_dir / "gt.ply"), load_mesh(case_dir / "coarse.ply")
    on_coarse = MeshQuery(np.asarray(coarse.vertices), np.asarray(coarse.faces)).closest(np.asarray(gt.vertices)).point
    save_mesh(tmp_path / "mesh.ply", 0.5 * (np.asarray(gt.vertices) + on_coarse), np.asarray(gt.faces))
    _, detailed, _ = evaluate_fit(case_dir, tmp_path)
    for name, share in detailed.depth_recovered.items():
        assert share == pytest.approx(0.5, abs=0.05), name


def test_bench_command_writes_a_report(tmp_path):
    out = tmp_path / "bench"
    argv = ["bench", "--cases", "1", "--case-seed", "7", "--out", str(out)]
    argv += set_flags(*TINY_FIT, "image.resolution=128")
    assert main(argv) == 0
    data = json.loads((out / "bench_report.json").read_text())
    case = data["cases"][0]
    assert case["coarse"]["wrinkle_scan_to_mesh"]["count"] > 100
    assert np.isfinite(case["detailed"]["scan_to_mesh"]["mean"])
    assert case["seconds"]["stage2"] > 0 and data["overall"]["mean_case_reduction"]
    coarse_w, detailed_w = case["coarse"]["wrinkle_scan_to_mesh"]["mean"], case["detailed"]["wrinkle_scan_to_mesh"]["mean"]
    assert data["overall"]["mean_case_reduction"]["wrinkle_scan_to_mesh_mean"] == \
        pytest.approx((coarse_w - detailed_w) / coarse_w)
    report = (out / "bench_report.md").read_text()
    assert "wrinkle scan-to-mesh mean" in report and "Depth recovered by region" in report
    recovered = data["overall"]["depth_recovered_mean"]
    assert set(recovered) == set(case["detailed"]["depth_recovered"]) and "nasolabial" in recovered
    assert recovered["nasolabial"] == pytest.approx(case["detailed"]["depth_recovered"]["nasolabial"])
    for name in ("bench_report.md", "cumulative_error.png", "pictures/case_000.png", "fits/case_000/mesh.ply"):
        assert (out / name).is_file(), name
