"""`fastsider batch`: a corrupt photo is recorded and does not stop the others; a rerun does no work."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fastsider.cli import main
from fit_helpers import TINY_FIT, set_flags


def _batch_argv(inp, out, *extra):
    argv = ["batch", str(inp), "--out", str(out), "--seed", "1", *extra]
    return argv + set_flags(*TINY_FIT, "stage1.iterations=100", "stage2.iterations=2")


@pytest.mark.slow  # three batch runs of whole fits
def test_batch_records_a_bad_photo_finishes_the_rest_and_reruns_for_free(tmp_path, example_files, monkeypatch,
                                                                        capsys):
    photo, _ = example_files
    inp, out = tmp_path / "photos", tmp_path / "meshes"
    (inp / "sub").mkdir(parents=True)
    shutil.copy(photo, inp / "a.png")
    shutil.copy(photo, inp / "sub" / "b.png")
    (inp / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")

    assert main(_batch_argv(inp, out, "--jobs", "2")) == 1  # one failure -> exit 1, the others done
    err = capsys.readouterr().err
    assert "1 photo(s) failed" in err
    manifest = json.loads((out / "manifest.json").read_text())["images"]
    assert {k: v["status"] for k, v in manifest.items()} == {"a.png": "done", "sub/b.png": "done",
                                                              "broken.jpg": "failed"}
    assert "broken.jpg" in manifest["broken.jpg"]["reason"]
    for rel in ("a_png", "sub/b_png"):
        assert (out / rel / "mesh.ply").is_file() and (out / rel / "summary.json").is_file()
    assert not (out / "broken_jpg").exists()  # a failed photo leaves no folder
    a = np.load(out / "a_png" / "depth.npy")
    assert np.array_equal(a, np.load(out / "sub" / "b_png" / "depth.npy"))  # same photo, same seed

    import fastsider.stages.batch as batch

    def no_fit(*args, **kwargs):
        raise AssertionError("a finished batch was fitted again")
    monkeypatch.setattr(batch, "fit_one", no_fit)
    assert main(_batch_argv(inp, out)) == 1  # the failure is still reported, but nothing is redone
    assert "skipped 3" in capsys.readouterr().err

    monkeypatch.undo()
    (inp / "broken.jpg").unlink()
    assert main(_batch_argv(inp, out, "--set", "stage2.iterations=3")) == 0  # new config: both redone
    manifest = json.loads((out / "manifest.json").read_text())["images"]
    assert manifest["a.png"]["status"] == "done"


def test_output_folders_never_clash_and_outputs_are_not_inputs(tmp_path):
    from pathlib import Path

    from fastsider.stages.batch import find_images, output_folders

    folders = output_folders([Path("a.jpg"), Path("a.png"), Path("sub/b.png")])
    assert folders == {"a.jpg": "a_jpg", "a.png": "a_png", "sub/b.png": "sub/b_png"}
    # the same name but for case (one folder on a case-insensitive file system), a name made to look like
    # another's folder, and an earlier run's folders kept for their photos and given to no other
    folders = output_folders([Path("a.jpg"), Path("a.JPG"), Path("A.jpg"), Path("a_jpg.png")])
    assert len({f.casefold() for f in folders.values()}) == 4 and folders["a_jpg.png"] == "a_jpg_png"
    again = output_folders([Path("B.png"), Path("b.png")], earlier={"b.png": "b_png", "gone.png": "x"})
    assert again == {"b.png": "b_png", "B.png": "B_png-2"}
    inp = tmp_path / "in"
    (inp / "out" / "a").mkdir(parents=True)
    (inp / ".hidden").mkdir()
    for p in ("x.png", "out/a/normals.png", ".hidden/y.png"):
        (inp / p).write_bytes(b"")
    assert [p.name for p in find_images(inp, exclude=inp / "out")] == ["x.png"]


def test_batch_ray_without_ray_installed_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where it is not installed
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"")
    assert main(["batch", str(tmp_path / "photos"), "--out", str(tmp_path / "out"), "--ray"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [("fastsider: error: --ray needs Ray, which is not installed: "
                                         "pip install 'fastsider[ray]'")]
    assert not (tmp_path / "out").exists()


def test_batch_progress_counts_done_failed_and_running():
    from fastsider.cli import _BatchBar
    from fastsider.stages.batch import ImageRecord

    bar = _BatchBar()
    recs = {rel: ImageRecord("pending", "h", "c", rel) for rel in ("a.png", "b.png", "c.png")}
    for rel, status in [("a.png", None), ("b.png", None), ("c.png", None), ("a.png", "running"),
                        ("b.png", "running"), ("a.png", "failed"), ("c.png", "running")]:
        if status is not None:
            recs[rel].status = status
        bar.update(rel, recs[rel])
    task = bar.progress.tasks[0]
    assert (task.completed, task.total) == (1, 3)
    assert task.description.startswith("done 0, failed 1, running 2")
