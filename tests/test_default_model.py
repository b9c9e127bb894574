"""The embedded default coarse model (fastsider.face.default_model): a clean disk of a triangulation,
and a metric face that reprojects onto the example's landmarks."""

from __future__ import annotations

import numpy as np
import trimesh

from fastsider.camera import project
from fastsider.config import DefaultModelConfig
from fastsider.face.default_model import build_default_coarse, face_mesh_triangles
from fastsider.io import square_crop_around
from fastsider.stages.prepare import working_camera


def test_face_mesh_triangulation_is_a_clean_disk():
    tris = face_mesh_triangles()
    mesh = trimesh.Trimesh(np.random.default_rng(0).normal(size=(468, 3)), tris, process=False)
    assert mesh.euler_number == 1  # one disk: eyes and mouth closed, the face outline open
    edges = trimesh.grouping.group_rows(mesh.edges_sorted, require_count=1)
    assert len(edges) > 0  # it has its outline boundary


def test_default_model_reprojects_onto_landmarks(example_landmarks):
    crop = square_crop_around(example_landmarks[:, :2], 0.45, 256)
    lmk = np.concatenate([crop.to_crop(example_landmarks[:, :2]), example_landmarks[:, 2:] * crop.scale], 1)
    cam = working_camera(4.0, 256)
    face = build_default_coarse(lmk, cam, DefaultModelConfig())
    err = np.linalg.norm(project(cam, face.landmarks_3d) - lmk[face.landmark_ids, :2], axis=1)
    assert err.mean() < 1.5  # smoothing moves landmark vertices by about a pixel, no more
    # metric scale: the two iris landmarks are ~63 mm apart once back-projected
    width = np.ptp(face.vertices[:, 0])
    assert 110.0 < width < 180.0, width  # an adult face is ~140 mm wide
    mesh = trimesh.Trimesh(face.vertices, face.faces, process=False)
    assert np.mean(mesh.face_normals[:, 2]) < -0.3  # normals face the camera (-z)
