"""High-passed detail metrics (eval/metrics.highpass, detail_agreement; eval/highpass): a smooth
coarse offset does not count, a half-depth copy reads 0.5, noise reads as noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastsider.eval.metrics import detail_agreement, highpass


def groove_depth(size: int = 128, depth_mm: float = 0.5, sigma_px: float = 2.0) -> np.ndarray:
    """A plane 800 mm away, tilted, with a vertical Gaussian groove (deeper = larger z) down the middle."""
    cols = np.arange(size)[None, :].repeat(size, 0).astype(float)
    rows = cols.T
    return 800.0 + 0.05 * cols + 0.02 * rows + depth_mm * np.exp(-((cols - size / 2) ** 2) / (2 * sigma_px**2))


def test_highpass_removes_a_plane_and_keeps_a_narrow_groove():
    mask = np.ones((128, 128), dtype=bool)
    plane = groove_depth(depth_mm=0.0)
    # linear, so exact where the blur's 4-sigma kernel stays inside (32 px from the border)
    assert np.nanmax(np.abs(highpass(plane, mask, 8.0)[33:-33, 33:-33])) < 1e-9
    hp = highpass(groove_depth(), mask, 8.0)
    # the groove (sigma 2) against a low-pass of sigma 8: 1 - 2 / sqrt(2^2 + 8^2) = 0.757 of it stays
    assert hp[64, 64] == pytest.approx(0.5 * (1 - 2 / math.sqrt(68)), rel=0.02)


def test_highpass_ignores_a_smooth_offset_at_long_wavelength():
    """A coarse surface off by 2 mm at a 200 px wavelength: its high-pass keeps under 5% of the error."""
    mask = np.ones((128, 128), dtype=bool)
    cols = np.arange(128)[None, :].repeat(128, 0)
    offset = 2.0 * np.sin(2 * np.pi * cols / 200.0)
    hp_true, hp_off = highpass(groove_depth(), mask, 8.0), highpass(groove_depth() + offset, mask, 8.0)
    inner = np.s_[24:-24, 24:-24]
    assert np.abs(hp_off - hp_true)[inner].max() < 0.05 * 2.0
    a = detail_agreement(hp_true[inner].ravel(), hp_off[inner].ravel())
    assert a.correlation > 0.9 and a.depth_recovered == pytest.approx(1.0, abs=0.1)


def test_highpass_is_nan_outside_the_mask_and_not_pulled_by_its_border():
    depth = groove_depth(depth_mm=0.0)
    mask = np.zeros_like(depth, dtype=bool)
    mask[30:100, 30:100] = True
    hp = highpass(depth, mask, 6.0)
    assert np.isnan(hp[~mask]).all()
    # normalized convolution: a plane stays ~0 up to the border (a zero-padded blur would give ~400 mm there)
    assert np.abs(hp[mask]).max() < 0.5


def test_detail_agreement_reads_half_depth_and_noise():
    rng = np.random.default_rng(0)
    true = rng.normal(size=5000)
    half = detail_agreement(true, 0.5 * true)
    assert half.correlation == pytest.approx(1.0) and half.depth_recovered == pytest.approx(0.5)
    noisy = detail_agreement(true, 0.5 * true + rng.normal(scale=0.5, size=5000))
    # var(found) = 0.25 + 0.25: correlation 0.5 / sqrt(0.5) = 0.707
    assert noisy.correlation == pytest.approx(1 / math.sqrt(2), abs=0.02)
    assert noisy.depth_recovered == pytest.approx(0.5, abs=0.03)
    assert detail_agreement(true, -true).depth_recovered == pytest.approx(-1.0)
    empty = detail_agreement(np.array([np.nan]), np.array([1.0]))
    assert math.isnan(empty.correlation) and empty.count == 0


def test_highpass_detail_of_a_case_knows_the_truth(tmp_path):
    """On a synthetic case: the GT as the fit scores 1, the coarse input itself (no detail added) 0."""
    from fastsider.eval.highpass import highpass_detail
    from fastsider.eval.synthetic import make_case
    from fastsider.eval.synthetic_details import REGIONS
    from fastsider.eval.synthetic_params import SyntheticParams

    case = make_case(3, SyntheticParams(image_size=256))
    gt, base = (case.gt_vertices, case.gt_faces), (case.base_vertices, case.gt_faces)
    half = (0.5 * (case.gt_vertices + case.base_vertices), case.gt_faces)
    scores = highpass_detail(gt, base, case.labels, {"coarse": (case.coarse_vertices, case.coarse_faces),
                                                      "gt_copy": gt, "half": half}, case.camera, REGIONS)
    # the coarse input is the base at a lower subdivision level (~0.02 mm off): nearly exact
    assert scores["gt_copy"]["wrinkles"]["correlation"] > 0.98
    assert scores["gt_copy"]["wrinkles"]["depth_recovered"] == pytest.approx(1.0, abs=0.03)
    assert scores["half"]["wrinkles"]["depth_recovered"] == pytest.approx(0.5, abs=0.03)
    assert scores["coarse"]["wrinkles"]["depth_recovered"] == 0.0 and scores["coarse"]["noise_rms_mm"] == 0.0
    assert scores["coarse"]["wrinkles"]["pixels"] > 500 and "forehead" in scores["gt_copy"]
    assert scores["gt_copy"]["noise_rms_mm"] < 0.02  # outside the details the GT adds nothing
    assert scores["gt"]["true_rms_mm"] > 0.05


def test_highpass_detail_holds_against_a_coarse_input_that_is_off():
    """The physically based bench's coarse input is off by a smooth 2.5 mm: the nose's wings and the
    lips then move by millimetres in the image, and depth differences at those contours are
    centimetres. The GT as the fit must still score ~1 and add ~no noise outside the details."""
    from dataclasses import replace

    from fastsider.eval.highpass import highpass_detail
    from fastsider.eval.synthetic import make_case
    from fastsider.eval.synthetic_details import REGIONS
    from fastsider.eval.synthetic_params import SyntheticParams

    case = make_case(10, replace(SyntheticParams(image_size=256), coarse_error_mm=2.5))
    gt, base = (case.gt_vertices, case.gt_faces), (case.base_vertices, case.gt_faces)
    scores = highpass_detail(gt, base, case.labels, {"coarse": (case.coarse_vertices, case.coarse_faces), "gt_copy": gt},
                             case.camera, REGIONS)
    assert scores["gt_copy"]["wrinkles"]["correlation"] > 0.9
    assert scores["gt_copy"]["wrinkles"]["depth_recovered"] == pytest.approx(1.0, abs=0.1)
    assert scores["gt_copy"]["noise_rms_mm"] < 0.6 * scores["gt"]["true_rms_mm"]
    assert scores["coarse"]["noise_rms_mm"] == 0.0
