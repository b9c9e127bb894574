"""`fastsider bench`: the evaluation against ground truth, and a tiny end-to-end run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fastsider.cli import main
from fastsider.eval.bench import evaluate_fit
from fit_helpers import TINY_FIT


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


def test_bench_command_writes_a_report(tmp_path):
    out = tmp_path / "bench"
    argv = ["bench", "--cases", "1", "--case-seed", "7", "--out", str(out)]
    for t in (*TINY_FIT, "image.resolution=128"):
        argv += ["--set", t]
    assert main(argv) == 0
    data = json.loads((out / "bench_report.json").read_text())
    case = data["cases"][0]
    assert case["coarse"]["wrinkle_scan_to_mesh"]["count"] > 100
    assert np.isfinite(case["detailed"]["scan_to_mesh"]["mean"])
    assert case["seconds"]["stage2"] > 0 and data["overall"]["mean_case_reduction"]
    coarse_w, detailed_w = case["coarse"]["wrinkle_scan_to_mesh"]["mean"], case["detailed"]["wrinkle_scan_to_mesh"]["mean"]
    assert data["overall"]["mean_case_reduction"]["wrinkle_scan_to_mesh_mean"] == \
        pytest.approx((coarse_w - detailed_w) / coarse_w)
    assert "wrinkle scan-to-mesh mean" in (out / "bench_report.md").read_text()
    for name in ("bench_report.md", "cumulative_error.png", "pictures/case_000.png", "fits/case_000/mesh.ply"):
        assert (out / name).is_file(), name
