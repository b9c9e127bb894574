"""A fuzz table of hostile and careless inputs through the command line (in-process ``main``): each
gets exit 2, one line on stderr, no traceback and no output folder, and fails before any heavy work
(the crop, landmark detection, the coarse model and the fit's state are booby-trapped). Then what
only shows at the end of a job: outputs all-or-nothing, a full disk, a folder in use, batch names,
a checkpoint of another shape, two faces in one photo."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh

from fastsider.cli import EXIT_BAD_INPUT, main

FOCAL = 2048.0  # camera of the 512 px example photo, and a 160 mm ball 700 mm in front of it: a 470 px face
CAMERA = {"width": 512, "height": 512, "fx": FOCAL, "fy": FOCAL, "cx": 255.5, "cy": 255.5}


class HeavyWork(BaseException):
    """Raised by the booby-trapped expensive steps: no handler of fastsider's catches it."""


@pytest.fixture
def no_heavy_work(monkeypatch):
    from fastsider.stages import fit, prepare

    def trap(*args, **kwargs):
        raise HeavyWork("expensive work started before the bad input was refused")
    for module, name in ((prepare, "apply_crop"), (prepare, "detect_landmarks"), (prepare, "build_default_coarse"),
                         (fit, "build_state")):
        monkeypatch.setattr(module, name, trap)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, example_files):
    """The files the table's cases are made of: good ones, and bad ones made from them."""
    d = tmp_path_factory.mktemp("inputs")
    photo, lmk = example_files
    ball = trimesh.creation.icosphere(subdivisions=3, radius=80.0)
    ball.apply_translation([0.0, 0.0, 700.0])
    ball.export(d / "ball.ply")
    metres = ball.copy()
    metres.apply_scale(0.001)  # what DECA, MICA and FLAME export
    metres.export(d / "metres.ply")
    stray = ball.copy()
    stray.vertices[0] = [0.0, 0.0, 1e30]
    stray.export(d / "stray.ply")
    fin = trimesh.Trimesh(np.vstack([ball.vertices, [[0.0, 200.0, 700.0]]]),
                          np.vstack([ball.faces, [[*ball.edges_unique[0], len(ball.vertices)]]]), process=False)
    fin.export(d / "fin.ply")
    flipped = trimesh.Trimesh(ball.vertices, np.vstack([ball.faces, ball.faces[:5, ::-1]]), process=False)
    flipped.export(d / "flipped.ply")
    behind = ball.copy()
    behind.apply_translation([0.0, 0.0, -1400.0])
    behind.export(d / "behind.ply")
    cams = {"camera": CAMERA, "fx_nan": {**CAMERA, "fx": float("nan")}, "fx_inf": {**CAMERA, "fx": float("inf")},
            "cx_nan": {**CAMERA, "cx": float("nan")}, "cy_inf": {**CAMERA, "cy": float("-inf")},
            "fx_huge": {**CAMERA, "fx": 1e12, "fy": 1e12}, "cx_far": {**CAMERA, "cx": 1e9},
            "fx_zero": {**CAMERA, "fx": 0.0}, "other_size": {**CAMERA, "width": 640}}
    for name, cam in cams.items():
        (d / f"{name}.json").write_text(json.dumps(cam))  # NaN and Infinity as JSON's non-standard literals
    (d / "folder.json").mkdir()
    os.mkfifo(d / "fifo.jpg")  # a pipe: every input path refuses it before reading (a read would block)
    (d / "latin1.toml").write_bytes(b"seed = 1\n# caf\xe9\n")
    (d / "broken.toml").write_text("[stage2\niterations = 3\n")
    (d / "nan.toml").write_text("[stage2]\nappearance_lr = nan\n")
    (d / "dir.toml").mkdir()
    (d / "empty.ply").write_text("")
    return {"photo": photo, "lmk": lmk, **{p.stem: p for p in d.iterdir()}}


def _mesh(name: str, camera: str = "camera") -> tuple[str, ...]:
    return ("--coarse", f"@{name}", "--camera", f"@{camera}")


# (case, command and arguments after the photo, what the message must say); "@name" is a file of
# `inputs`, "--set" values are config overrides
CASES = [
    # config values: type, range, finiteness, memory, named by their key
    ("seed_negative", ("--seed", "-1"), "seed must be >= 0"),
    ("seed_huge", ("--seed", str(2**70)), "seed must be"),
    ("seed_float", ("--set", "seed=1.5"), "seed: expected int"),
    ("checkpoint_every_0", ("--set", "run.checkpoint_every=0"), "run.checkpoint_every must be >= 1"),
    ("lr_nan", ("--set", "stage2.mlp.lr=nan"), "stage2.mlp.lr must be a finite number"),
    ("height_lr_nan", ("--set", "stage2.height_map.lr=nan"), "stage2.height_map.lr must be a finite number"),
    ("stage1_lr_inf", ("--set", "stage1.lr=inf"), "stage1.lr must be a finite number"),
    ("resolution_0", ("--set", "image.resolution=0"), "image.resolution must be >= 32"),
    ("resolution_negative", ("--set", "image.resolution=-512"), "image.resolution must be >= 32"),
    ("ipd_nan", ("--set", "default_model.ipd_mm=nan"), "default_model.ipd_mm must be a finite number"),
    ("ipd_negative", ("--set", "default_model.ipd_mm=-63"), "default_model.ipd_mm must be >= 20"),
    ("focal_factor_0", ("--set", "default_model.focal_factor=0"), "default_model.focal_factor must be >= 0.25"),
    ("near_std_empty", ("--set", "sdf_pool.near_std_mm=[]"), "sdf_pool.near_std_mm must be a list of at least 1"),
    ("near_std_negative", ("--set", "sdf_pool.near_std_mm=[1.0, -2.0]"), "sdf_pool.near_std_mm[1] must be > 0"),
    ("mesh_resolution_huge", ("--set", "mesh.resolution=4096"), "mesh.resolution must be >= 8 and <= 1024"),
    ("lattice_huge", ("--set", "model.lattice.resolution=100000"), "model.lattice.resolution must be"),
    ("pool_huge", ("--set", "sdf_pool.size=10000000000"), "sdf_pool.size must be"),
    ("iterations_negative", ("--set", "stage2.iterations=-5"), "stage2.iterations must be >= 0"),
    ("iterations_text", ("--set", "stage2.iterations=many"), "stage2.iterations: expected int"),
    ("crop_margin_negative", ("--set", "image.crop_margin=-0.6"), "image.crop_margin must be >= 0"),
    ("max_megapixels_nan", ("--set", "image.max_megapixels=nan"), "image.max_megapixels must be a finite number"),
    ("grid_resolution_0", ("--set", "trace.grid_resolution=0"), "trace.grid_resolution must be >= 2"),
    ("unknown_key", ("--set", "stage2.no_such_key=1"), "unknown key"),
    ("not_key_value", ("--set", "stage2.iterations"), "is not KEY=VALUE"),
    ("bad_choice", ("--set", "model.detail=wrinkles"), "is not one of"),
    ("toml_latin1", ("--config", "@latin1"), "can't decode byte"),
    ("toml_syntax", ("--config", "@broken"), "broken.toml"),
    ("toml_nan", ("--config", "@nan"), "stage2.appearance_lr must be a finite number"),
    ("toml_folder", ("--config", "@dir"), "not a regular file"),
    ("toml_missing", ("--config", "missing.toml"), "not found"),
    ("unknown_preset", ("--config", "fastest"), "unknown preset"),
    # camera.json
    ("camera_fx_nan", _mesh("ball", "fx_nan"), "fx must be a finite number"),
    ("camera_fx_inf", _mesh("ball", "fx_inf"), "fx must be a finite number"),
    ("camera_cx_nan", _mesh("ball", "cx_nan"), "cx must be a finite number"),
    ("camera_cy_inf", _mesh("ball", "cy_inf"), "cy must be a finite number"),
    ("camera_fx_zero", _mesh("ball", "fx_zero"), "positive width, height, fx and fy"),
    ("camera_fx_huge", _mesh("ball", "fx_huge"), "not on the 512x512 photo"),
    ("camera_cx_far", _mesh("ball", "cx_far"), "not on the 512x512 photo"),
    ("camera_other_size", _mesh("ball", "other_size"), "is for a 640x512 image"),
    ("camera_folder", _mesh("ball", "folder"), "camera file is a directory"),
    ("camera_fifo", _mesh("ball", "fifo"), "camera file is not a regular file"),
    ("camera_without_mesh", ("--camera", "@camera"), "go together"),
    # coarse meshes
    ("mesh_in_metres", _mesh("metres"), "--coarse-units m"),
    ("mesh_in_mm_said_metres", (*_mesh("ball"), "--coarse-units", "m"), "a face is 40-600 mm"),
    ("mesh_stray_vertex", _mesh("stray"), "a stray vertex"),
    ("mesh_fin", _mesh("fin"), "shared by more than two triangles"),
    ("mesh_flipped_duplicates", _mesh("flipped"), "5 repeated triangle(s)"),
    ("mesh_behind_camera", _mesh("behind"), "in front of the camera"),
    ("mesh_empty_file", _mesh("empty"), "empty.ply"),
    ("mesh_folder", _mesh("folder"), "mesh is a directory"),
    ("mesh_fifo", ("--coarse", "@fifo", "--camera", "@camera"), "mesh is not a regular file"),
    ("mesh_without_camera", ("--coarse", "@ball"), "go together"),
    # the photo and the other input files
    ("photo_fifo", ("@fifo",), "input image is not a regular file"),
    ("photo_folder", ("@folder",), "input image is a directory"),
    ("photo_missing", ("missing.jpg",), "input image not found"),
    ("photo_over_the_limit", ("--set", "image.max_megapixels=0.1"), "image.max_megapixels = 0.1"),
    ("photo_and_example", ("--example",), "not both"),
    ("landmarks_fifo", ("--landmarks", "@fifo"), "landmark file is not a regular file"),
    ("flame_fifo", ("--flame", "@fifo"), "FLAME file is not a regular file"),
]


def _argv(command: str, args: tuple[str, ...], inputs: dict[str, Path], out: Path) -> list[str]:
    """The photo first (unless the case gives one), then the case's arguments, --landmarks and --out."""
    resolved = [str(inputs[a[1:]]) if a.startswith("@") else a for a in args]
    has_photo = bool(args) and (args[0].startswith("@") or args[0].endswith(".jpg"))
    lmk = [] if "--landmarks" in args else ["--landmarks", str(inputs["lmk"])]
    return [command, *([] if has_photo else [str(inputs["photo"])]), *resolved, *lmk, "--out", str(out)]


def assert_one_line_failure(code: int, err: str, expect: str) -> None:
    assert code == EXIT_BAD_INPUT, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastsider: error: ") and expect in lines[0], err


@pytest.mark.parametrize("case,args,expect", CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_is_one_line_exit_2_nothing_written_no_work_done(case, args, expect, inputs, tmp_path,
                                                                     capsys, no_heavy_work):
    command = "coarse" if case.startswith(("photo", "mesh_in_mm")) else "fit"  # both share the checks
    out = tmp_path / "out"
    code = main(_argv(command, args, inputs, out))
    assert_one_line_failure(code, capsys.readouterr().err, expect)
    assert not out.exists()  # not even an empty folder


def test_pillows_bomb_guard_is_not_the_limit(inputs, monkeypatch, capsys):
    """Pillow refuses over 89 MP on its own; fastsider's image.max_megapixels (100) is the limit."""
    from PIL import Image

    from fastsider.io import load_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # as if the photo were past Pillow's guard
    assert load_image(inputs["photo"]).shape == (512, 512, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000  # put back


def test_metres_pass_with_coarse_units_and_give_the_mm_mesh(inputs, tmp_path, capsys):
    from fit_helpers import read_mesh

    for name, units in (("ball", "mm"), ("metres", "m")):
        assert main(["coarse", str(inputs["photo"]), *(str(inputs[a[1:]]) if a[0] == "@" else a for a in _mesh(name)),
                     "--coarse-units", units, "--out", str(tmp_path / units)]) == 0
    np.testing.assert_allclose(read_mesh(tmp_path / "m" / "coarse.ply").vertices,
                               read_mesh(tmp_path / "mm" / "coarse.ply").vertices, atol=1e-3)


# --------------------------------------------------------------------------------------------
# outputs: all-or-nothing, a full disk, one run per folder

FAST_COARSE = ("--set", "default_model.subdivisions=1")  # a coarse job of about a second


def _coarse(inputs, out: Path, *extra: str) -> list[str]:
    return ["coarse", str(inputs["photo"]), "--landmarks", str(inputs["lmk"]), *FAST_COARSE, *extra, "--out", str(out)]


@pytest.mark.parametrize("blocked", ["overlay.png", "coarse.ply"])
def test_a_folder_where_an_output_goes_moves_no_output(inputs, tmp_path, capsys, blocked):
    out = tmp_path / "out"
    (out / blocked).mkdir(parents=True)
    (out / "camera.json").write_text("an earlier run's")
    code = main(_coarse(inputs, out))
    assert_one_line_failure(code, capsys.readouterr().err, "a folder is in the way")
    assert sorted(p.name for p in out.iterdir()) == sorted([blocked, "camera.json"])  # nothing moved, nothing left
    assert (out / "camera.json").read_text() == "an earlier run's"


def test_a_folder_where_the_mesh_goes_is_refused_before_the_fit(inputs, tmp_path, capsys, no_heavy_work):
    (tmp_path / "face.ply").mkdir()
    code = main(_argv("fit", (), inputs, tmp_path / "face.ply"))  # --out x.ply: the mesh's path
    assert_one_line_failure(code, capsys.readouterr().err, "a folder is in the way")
    assert [p.name for p in tmp_path.iterdir()] == ["face.ply"] and not any((tmp_path / "face.ply").iterdir())


def test_a_move_that_fails_midway_is_undone_and_replaced_files_come_back(tmp_path, monkeypatch):
    from fastsider.errors import OutputError
    from fastsider.io import OutputStage

    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("old a")
    real, calls = os.replace, []

    def fails_on_the_fourth(src, dst):
        calls.append(dst)
        if len(calls) == 4:  # a.txt's backup, a.txt, b.txt, then c.txt fails
            raise OSError(errno.EIO, "Input/output error", str(dst))
        real(src, dst)
    with pytest.raises(OutputError, match="Input/output error.*no outputs were written"), OutputStage(out) as stage:
        for name in ("a.txt", "b.txt", "c.txt"):
            stage.path(name).write_text(f"new {name}")
        monkeypatch.setattr(os, "replace", fails_on_the_fourth)
        stage.commit()
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"] and (out / "a.txt").read_text() == "old a"


def test_a_full_disk_is_one_line_and_leaves_nothing(inputs, tmp_path, capsys, monkeypatch):
    from fastsider.stages import export

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(export, "save_json", full)
    out = tmp_path / "out"
    code = main(_coarse(inputs, out))
    assert_one_line_failure(code, capsys.readouterr().err, "No space left on device")
    assert not out.exists()


def test_a_full_disk_keeps_the_checkpoint_for_resume(tmp_path):
    from fastsider.errors import OutputError
    from fastsider.io import OutputStage

    with pytest.raises(OutputError, match="No space left on device.*rerun with --resume"), \
            OutputStage(tmp_path, partial=".partial") as stage:
        (stage.private_dir("checkpoint") / "checkpoint.pt").write_bytes(b"state")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert (tmp_path / ".partial" / ".checkpoint" / "checkpoint.pt").read_bytes() == b"state"


def test_a_full_disk_while_checkpointing_is_an_os_error_and_the_old_checkpoint_stays(tmp_path, monkeypatch):
    from fastsider.stages.checkpoint import CheckpointStore

    store = CheckpointStore(tmp_path, "c", "i")
    store.save({"stage": "stage1", "x": torch.zeros(3)})

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))
    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OSError, match="No space"):
        store.save({"stage": "stage1", "x": torch.ones(3)})
    monkeypatch.undo()
    assert torch.equal(torch.load(store.path, weights_only=False)["x"], torch.zeros(3))


def test_a_second_run_on_a_folder_in_use_touches_nothing(inputs, tmp_path, capsys, no_heavy_work):
    from fastsider.io import lock_folder

    out = tmp_path / "out"
    ckpt = out / ".fastsider-partial" / ".checkpoint" / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"the first run's")
    lock = lock_folder(out)  # the first run, still going
    try:
        code = main(_argv("fit", (), inputs, out))
    finally:
        os.close(lock)
    assert_one_line_failure(code, capsys.readouterr().err, "is in use by another fastsider run")
    assert ckpt.read_bytes() == b"the first run's"


# --------------------------------------------------------------------------------------------
# checkpoints of another shape, batch names and folders, two faces


def test_a_checkpoint_of_other_shapes_is_refused_before_loading(tmp_path):
    from fastsider.config import RunConfig
    from fastsider.stages.checkpoint import CheckpointError, CheckpointStore
    from fastsider.stages.loop import Schedule, optimize

    store = CheckpointStore(tmp_path, "c", "i")
    small = torch.nn.Linear(2, 3)
    opt = torch.optim.Adam(small.parameters())
    store.save({"stage": "stage1", "model": small.state_dict(), "optim": opt.state_dict(),
                "generator": torch.Generator().get_state(), "loop": {"step": 1}})
    saved = store.load()
    with pytest.raises(CheckpointError, match="does not fit this run's model"):
        store.check_model(saved, torch.nn.Linear(2, 4))
    other = torch.nn.Linear(2, 3)  # same shapes, another optimizer layout
    with pytest.raises(CheckpointError, match="does not fit this run"):
        optimize(other, [{"params": [other.weight]}, {"params": [other.bias]}], lambda: {"loss": other.weight.sum()},
                 Schedule("stage 1", 2, 0.1), RunConfig(), torch.Generator(), resume=saved)


def test_batch_refuses_an_output_folder_holding_its_input(inputs, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(inputs["photo"], photos / "a.png")
    for out in (photos, tmp_path):
        code = main(["batch", str(photos), "--out", str(out)])
        assert_one_line_failure(code, capsys.readouterr().err, "holds the input folder")


def test_batch_a_failed_photo_leaves_no_folder(tmp_path, capsys):
    photos, out = tmp_path / "photos", tmp_path / "meshes"
    photos.mkdir()
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main(["batch", str(photos), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "1 photo(s) failed" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]


@pytest.mark.parametrize("large_first", [True, False])
def test_two_faces_in_a_wide_photo_give_the_larger(example_rgb, large_first):
    """The face mesh's own detector finds no face in a 2:1 photo; the full-range detector's windows do."""
    from fastsider.face.landmarks import detect_landmarks

    small = np.zeros_like(example_rgb)
    small[128:384, 128:384] = example_rgb[::2, ::2]  # the same face at half the size
    photo = np.concatenate([example_rgb, small] if large_first else [small, example_rgb], axis=1)
    lmk = detect_landmarks(photo, source="two faces")
    assert (lmk[:, 0].max() < 512) == large_first and np.ptp(lmk[:, 0]) > 60  # the larger one


def test_a_photo_of_two_faces_gives_a_coarse_mesh(example_rgb, tmp_path, capsys):
    iio.imwrite(tmp_path / "two.png", np.concatenate([example_rgb, example_rgb], axis=1))
    assert main(["coarse", str(tmp_path / "two.png"), *FAST_COARSE, "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "coarse.ply").is_file()
