"""Bad input to the command line gets one clear line on stderr, exit code 2, and no output files."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest

from fastsider.cli import EXIT_BAD_INPUT, main


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_clean_failure(code: int, err: str, out_dir, expect: str) -> None:
    assert code == EXIT_BAD_INPUT
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("fastsider:")]
    assert len(lines) == 1 and expect in lines[0], err
    assert "Traceback" not in err
    assert not out_dir.exists() or not any(out_dir.iterdir()), list(out_dir.iterdir())


def test_missing_file(tmp_path, capsys):
    code, err = run_cli(capsys, "coarse", tmp_path / "nope.jpg", "--out", tmp_path / "o")
    assert_clean_failure(code, err, tmp_path / "o", "not found")


def test_directory(tmp_path, capsys):
    code, err = run_cli(capsys, "coarse", tmp_path, "--out", tmp_path / "o")
    assert_clean_failure(code, err, tmp_path / "o", "directory")


def test_not_an_image(tmp_path, capsys):
    p = tmp_path / "face.jpg"
    p.write_text("this is not a JPEG")
    code, err = run_cli(capsys, "coarse", p, "--out", tmp_path / "o")
    assert_clean_failure(code, err, tmp_path / "o", "not a readable image")


def test_truncated_image(tmp_path, capsys, example_rgb):
    p = tmp_path / "face.jpg"
    iio.imwrite(p, example_rgb)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    code, err = run_cli(capsys, "coarse", p, "--out", tmp_path / "o")
    assert_clean_failure(code, err, tmp_path / "o", "cannot decode")


def test_no_face(tmp_path, capsys):
    p = tmp_path / "wall.png"
    iio.imwrite(p, np.tile(np.linspace(0, 255, 256, dtype=np.uint8)[None, :, None], (256, 1, 3)))
    code, err = run_cli(capsys, "coarse", p, "--out", tmp_path / "o")
    assert_clean_failure(code, err, tmp_path / "o", "no face")


def test_face_too_small(tmp_path, capsys, example_files, example_landmarks):
    photo, _ = example_files
    small = example_landmarks.copy()
    small[:, :2] = small[:, :2] * 0.15 + 10.0  # a ~25 px face
    np.save(tmp_path / "small.npy", small)
    code, err = run_cli(capsys, "coarse", photo, "--landmarks", tmp_path / "small.npy", "--out", tmp_path / "o")
    assert_clean_failure(code, err, tmp_path / "o", "too small")


def test_tiny_image(tmp_path, capsys):
    p = tmp_path / "tiny.png"
    iio.imwrite(p, np.zeros((32, 32, 3), dtype=np.uint8))
    code, err = run_cli(capsys, "coarse", p, "--out", tmp_path / "o")
    assert_clean_failure(code, err, tmp_path / "o", "too small")


def test_enormous_image(tmp_path, capsys, example_files):
    photo, _ = example_files  # 0.26 MP against a lowered limit: same code path as a real giant
    code, err = run_cli(capsys, "coarse", photo, "--set", "image.max_megapixels=0.1", "--out", tmp_path / "o")
    assert_clean_failure(code, err, tmp_path / "o", "too large")


def test_unwritable_output(tmp_path, capsys, example_files):
    photo, lmk = example_files
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = run_cli(capsys, "coarse", photo, "--landmarks", lmk, "--out", blocker / "sub" / "coarse.ply")
    assert code == EXIT_BAD_INPUT and "cannot write" in err and "Traceback" not in err


def test_broken_flame_file(tmp_path, capsys, example_files):
    photo, lmk = example_files
    bad = tmp_path / "generic_model.pkl"
    bad.write_bytes(b"\x80\x02garbage" * 10)
    code, err = run_cli(capsys, "coarse", photo, "--landmarks", lmk, "--flame", bad, "--out", tmp_path / "o")
    assert_clean_failure(code, err, tmp_path / "o", "generic_model.pkl")


@pytest.mark.parametrize("content,expect", [
    ("{not json", "not valid JSON"),
    (json.dumps({"width": 512, "height": 512, "fx": 800}), "lacks the key"),
    (json.dumps({"width": 512, "height": 512, "fx": 800, "fy": 800, "cx": 1, "cy": 1,
                 "world_to_camera": [[1, 0], [0, 1]]}), "4x4"),
])
def test_broken_camera_json(tmp_path, capsys, example_files, content, expect):
    photo, _ = example_files
    (tmp_path / "camera.json").write_text(content)
    (tmp_path / "m.ply").write_text("ply\n")
    code, err = run_cli(capsys, "coarse", photo, "--coarse", tmp_path / "m.ply", "--camera",
                        tmp_path / "camera.json", "--out", tmp_path / "o")
    assert_clean_failure(code, err, tmp_path / "o", expect)


def test_bad_config_override(tmp_path, capsys, example_files):
    photo, lmk = example_files
    code, err = run_cli(capsys, "coarse", photo, "--set", "stage2.no_such_key=1", "--out", tmp_path / "o")
    assert_clean_failure(code, err, tmp_path / "o", "unknown key")
