"""Shared fixtures: the example photo and its landmarks (detected once per test session), the device
a test runs on (CPU, and CUDA where there is one), and the seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastsider.face.landmarks import detect_landmarks
from fastsider.io import load_example


@pytest.fixture(scope="session")
def example_rgb() -> np.ndarray:
    return load_example()


@pytest.fixture(scope="session")
def example_landmarks(example_rgb) -> np.ndarray:
    return detect_landmarks(example_rgb, source="astronaut")


@pytest.fixture(scope="session")
def example_files(tmp_path_factory, example_rgb, example_landmarks):
    """The example photo as a PNG and its landmarks as .npy, for CLI runs that skip detection."""
    import imageio.v3 as iio

    d = tmp_path_factory.mktemp("example")
    iio.imwrite(d / "face.png", example_rgb)
    np.save(d / "landmarks.npy", example_landmarks)
    return d / "face.png", d / "landmarks.npy"


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def device(request) -> str:
    """The device of a test that runs on both: "cpu", and "cuda" (skipped without a CUDA device)."""
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
