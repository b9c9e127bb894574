"""Images in; meshes, images and JSON out, all-or-nothing.

Input images of any common format become 8-bit RGB with EXIF orientation applied. Outputs are
staged in a hidden temporary folder beside their destination and moved into place only when the
whole job succeeded (:class:`OutputStage`), so a failed run leaves no half-written files.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import imageio.v3 as iio
import numpy as np
import trimesh
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy.ndimage import gaussian_filter
from skimage.transform import AffineTransform, warp

from fastsider.config import ImageConfig
from fastsider.errors import InputError, OutputError

log = logging.getLogger(__name__)

UINT16_MAX = 65535.0


def regular_file(path: str | Path, what: str = "input") -> Path:
    """``path`` if it is a regular file (or a link to one), else :class:`InputError`: a folder, a pipe
    or a device is refused before anything opens it (reading a FIFO would block for ever)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} not found: {p}")
    if p.is_dir():
        raise InputError(f"{what} is a directory, not a file: {p}")
    if not p.is_file():
        raise InputError(f"{what} is not a regular file (a pipe, socket or device?): {p}")
    return p


def load_image(path: str | Path, cfg: ImageConfig = ImageConfig()) -> np.ndarray:
    """Read an image as 8-bit RGB ``[H, W, 3]`` with EXIF orientation applied.

    Grayscale, palette, RGBA (alpha dropped) and 16-bit images are converted. The size limit is
    ``image.max_megapixels``, checked on the header before decoding (Pillow's own bomb guard, fixed
    at 89 MP, is off). Raises :class:`InputError` with one line for anything that is not a usable image.
    """
    p = regular_file(path, "input image")
    try:
        with _pillow_size_limit_off(), Image.open(p) as img:
            _check_size(p, img.size, cfg)
            img.load()  # decode now: truncated files fail here, not later
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb8(img)
    except InputError:
        raise
    except UnidentifiedImageError as exc:
        raise InputError(f"not a readable image: {p} ({type(exc).__name__})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot decode image {p}: {exc}") from None
    return rgb


@contextmanager
def _pillow_size_limit_off() -> Iterator[None]:
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


EXAMPLE_NAME = "astronaut"  # scikit-image's bundled portrait (Eileen Collins, public domain)


def load_example() -> np.ndarray:
    """The embedded example photo, 512x512 RGB, shipped inside scikit-image (no download)."""
    from skimage import data

    return data.astronaut()


def _check_size(p: Path, size: tuple[int, int], cfg: ImageConfig) -> None:
    w, h = size
    if min(w, h) < cfg.min_image_px:
        raise InputError(f"image {p} is too small ({w}x{h}); need at least {cfg.min_image_px} px per side")
    if w * h > cfg.max_megapixels * 1e6:
        raise InputError(f"image {p} is too large ({w}x{h}, {w * h / 1e6:.1f} megapixels); the limit is "
                         f"image.max_megapixels = {cfg.max_megapixels:g} (raise it with --set)")


def _to_rgb8(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        peak = UINT16_MAX if a.max() > 255 else 255.0
        a = np.clip(a / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if img.mode == "P":
        img = img.convert("RGBA")
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


# --------------------------------------------------------------------------------------------
# the face crop


@dataclass(frozen=True)
class CropTransform:
    """Working-crop pixels = ``scale * input pixels + (offset_x, offset_y)`` (centre convention)."""

    scale: float
    offset_x: float
    offset_y: float
    size: int

    def to_crop(self, pts: np.ndarray) -> np.ndarray:  # [n_pts, 2] -> [n_pts, 2]
        return pts * self.scale + np.array([self.offset_x, self.offset_y])

    def to_input(self, pts: np.ndarray) -> np.ndarray:  # [n_pts, 2] -> [n_pts, 2]
        return (pts - np.array([self.offset_x, self.offset_y])) / self.scale

    def to_json_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "offset_x": self.offset_x, "offset_y": self.offset_y, "size": self.size}


def square_crop_around(points_px: np.ndarray, margin: float, size: int) -> CropTransform:
    """Square crop around a point set (e.g. landmarks) grown by ``margin`` of its side on each side.

    Args:
        points_px: [n_pts, 2] input-image pixel coordinates.
    """
    lo, hi = points_px.min(axis=0), points_px.max(axis=0)
    side = float((hi - lo).max()) * (1.0 + 2.0 * margin)
    centre = (lo + hi) / 2.0
    left_edge = centre - side / 2.0  # continuous coordinates of the crop's outer edge
    scale = size / side
    # pixel centres: crop_u + 0.5 = scale * (u + 0.5 - left_edge)
    offset = scale * (0.5 - left_edge) - 0.5
    return CropTransform(scale=scale, offset_x=float(offset[0]), offset_y=float(offset[1]), size=size)


def apply_crop(rgb: np.ndarray, crop: CropTransform) -> np.ndarray:
    """Resample the crop (bilinear, anti-aliased when shrinking). rgb uint8 [H, W, 3] -> float [S, S, 3] in [0, 1]."""
    img = rgb.astype(np.float32) / 255.0
    if crop.scale < 1.0:
        sigma = (1.0 / crop.scale - 1.0) / 2.0  # as skimage.transform.rescale(anti_aliasing=True)
        img = gaussian_filter(img, sigma=(sigma, sigma, 0))
    # warp maps output (col, row) -> input via the inverse transform
    fwd = AffineTransform(scale=crop.scale, translation=(crop.offset_x, crop.offset_y))
    out = warp(img, fwd.inverse, output_shape=(crop.size, crop.size), order=1, mode="edge")
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------
# all-or-nothing outputs


# errors of writing, whatever the path: no space or quota, a file too large, a read-only or failing
# disk, no permission
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM}


class OutputStage:
    """Collects a job's output files in a temporary folder; :meth:`commit` moves them into place.

    Use as a context manager: on an exception nothing reaches the destination folder (a folder the
    stage created is removed again if it stayed empty). A resumable stage (``partial``) keeps its
    hidden folder after an exception when it holds private state (a checkpoint), so ``--resume``
    can continue. One stage at a time per folder: the folder is locked while the stage is open.
    OS errors while writing or moving (a full disk, no permission) become one-line :class:`OutputError`.
    """

    def __init__(self, out_dir: str | Path, partial: str | None = None, resume: bool = False,
                 expect: tuple[str, ...] = ()):
        """``partial``: a fixed hidden staging folder that survives an interrupted run (with its
        private state, e.g. checkpoints); ``resume`` keeps what an earlier run staged there;
        ``expect``: outputs whose targets are checked now, before the job (:meth:`commit` checks all)."""
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise InputError(f"output folder is a file: {self.out_dir}")
        self.names: dict[str, None] = {}  # ordered set
        self.inherited: set[str] = set()  # staged by an earlier, interrupted run
        self.resumable = partial is not None
        self.created = [d for d in (self.out_dir, *self.out_dir.parents) if not d.exists()]  # deepest first
        for name in expect:
            self._check_target(self.out_dir / name)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.lock = lock_folder(self.out_dir)  # before anything in it is touched
            if partial is None:
                self.tmp = Path(tempfile.mkdtemp(prefix=".fastsider-tmp-", dir=self.out_dir))
            else:
                self.tmp = self.out_dir / partial
                if self.tmp.exists() and not resume:
                    shutil.rmtree(self.tmp)
                self.tmp.mkdir(exist_ok=True)
        except OSError as exc:
            self._release()
            raise InputError(f"cannot write to output folder {self.out_dir}: {exc.strerror}") from None
        for f in sorted(self.tmp.rglob("*")):
            rel = f.relative_to(self.tmp).as_posix()
            if f.is_file() and not rel.startswith("."):
                self.names[rel] = None
                self.inherited.add(rel)

    def private_dir(self, name: str) -> Path:
        """A folder for state that is not an output (never moved into ``out_dir``)."""
        p = self.tmp / f".{name}"
        p.mkdir(exist_ok=True)
        return p

    def path(self, name: str, replace: bool = False) -> Path:
        """Temporary path for output ``name`` (may contain one sub-folder, e.g. snapshots/x.png)."""
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if name in self.names and not (replace or name in self.inherited):
            raise ValueError(f"output {name!r} written twice")
        self.names[name] = None
        return p

    def commit(self) -> list[Path]:
        """Move every output into ``out_dir``, or none: each target is checked first, and a move
        that fails all the same undoes the ones before it (files they replaced are put back)."""
        moves = [(self.tmp / name, self.out_dir / name) for name in self.names]
        for _, dst in moves:
            self._check_target(dst)
        backup = self.tmp / ".replaced"
        done: list[tuple[Path, Path, Path | None]] = []
        try:
            for src, dst in moves:
                dst.parent.mkdir(parents=True, exist_ok=True)
                old = None
                if dst.exists() or dst.is_symlink():
                    old = backup / src.relative_to(self.tmp)
                    old.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(dst, old)
                done.append((src, dst, old))
                os.replace(src, dst)
        except OSError as exc:
            for src, dst, old in reversed(done):
                with suppress(OSError):
                    if not src.exists():
                        os.replace(dst, src)
                    if old is not None:
                        os.replace(old, dst)
            raise OutputError(f"cannot move the outputs into {self.out_dir}: {exc.strerror} ({exc.filename})") from None
        shutil.rmtree(self.tmp, ignore_errors=True)
        return [dst for _, dst in moves]

    def _check_target(self, dst: Path) -> None:
        if dst.is_dir() and not dst.is_symlink():
            raise OutputError(f"cannot write {dst}: a folder is in the way")
        for parent in dst.relative_to(self.out_dir).parents:
            folder = self.out_dir / parent
            if folder.exists() and not folder.is_dir():
                raise OutputError(f"cannot write {dst}: {folder} is a file")
            if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
                raise OutputError(f"cannot write {dst}: no permission to write in {folder}")

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "OutputStage":
        return self

    def has_private_state(self) -> bool:
        return self.resumable and any(p.is_file() for p in self.tmp.glob(".*/*"))

    def __exit__(self, exc_type, exc, tb) -> None:
        kept = exc_type is not None and self.has_private_state()
        try:
            if exc_type is not None and not kept:
                self.abort()
                for d in self.created:  # deepest first: only folders this stage made, and only if empty
                    with suppress(OSError):
                        d.rmdir()
        finally:
            self._release()
        if isinstance(exc, OSError) and self._is_write_error(exc):
            where = f" ({exc.filename})" if exc.filename else ""
            exc = OutputError(f"cannot write the outputs in {self.out_dir}: {exc.strerror or exc}{where}")
        if isinstance(exc, OutputError):
            hint = ("; the checkpoint is kept: fix this, then rerun with --resume" if kept
                    else "; no outputs were written")
            raise OutputError(f"{exc}{hint}") from None

    def _is_write_error(self, exc: OSError) -> bool:
        """A full disk, a read-only or failing disk, no permission, or anything about a path in ``out_dir``."""
        inside = exc.filename is not None and Path(os.path.abspath(exc.filename)).is_relative_to(
            os.path.abspath(self.out_dir))
        return inside or exc.errno in WRITE_ERRNOS

    def _release(self) -> None:
        lock = getattr(self, "lock", None)
        if lock is not None:
            os.close(lock)
            self.lock = None


def lock_folder(folder: Path) -> int | None:
    """An exclusive lock on ``folder`` itself, held by the returned descriptor (close it to release;
    the OS releases it when the process dies, so a killed run leaves no stale lock, and no lock file
    is left behind). :class:`OutputError` if another process holds it. None where the system or the
    file system has no ``flock`` (the folder is then used unlocked)."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputError(f"output folder {folder} is in use by another fastsider run; wait for it to "
                          "finish or choose another --out") from None
    except OSError:
        os.close(fd)
        log.debug("no lock on %s: its file system does not support flock", folder)
        return None
    return fd


def save_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


PNG_COMPRESS_LEVEL = 3  # zlib level: 2.5x faster than the default 6 for ~20% larger files


def png_bytes(img: np.ndarray) -> bytes:
    """A PNG of float [H, W(, C)] in [0, 1] (8-bit), uint8, or uint16 (16-bit)."""
    if img.dtype not in (np.uint8, np.uint16):
        img = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return iio.imwrite("<bytes>", img, extension=".png", compress_level=PNG_COMPRESS_LEVEL)


def save_image(path: Path, img: np.ndarray) -> None:
    """Float images in [0, 1] or uint8 -> PNG."""
    # encoded in memory, then written: a full disk is one OSError here, not one more from a destructor
    path.write_bytes(png_bytes(img))


def save_mesh(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    trimesh.Trimesh(vertices, faces, process=False).export(path)


def load_mesh(path: str | Path) -> trimesh.Trimesh:
    """A triangle mesh (PLY/OBJ/STL/OFF/GLB), or :class:`InputError`."""
    p = regular_file(path, "mesh")
    try:
        mesh = trimesh.load(p, force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types for bad files
        raise InputError(f"cannot read mesh {p}: {exc}") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise InputError(f"mesh {p} has no triangles")
    if not np.all(np.isfinite(mesh.vertices)):
        raise InputError(f"mesh {p} has non-finite vertices")
    return mesh


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """The sRGB tone curve of a camera's output, linear [0, 1] -> encoded [0, 1]."""
    x = np.clip(linear, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)


def srgb_decode(encoded: np.ndarray) -> np.ndarray:
    """The inverse of :func:`srgb_encode`: display-referred colours [0, 1] -> linear reflectance."""
    x = np.clip(encoded, 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, np.power((x + 0.055) / 1.055, 2.4))


@contextmanager
def silenced_fd(fd: int) -> Iterator[None]:
    """Point file descriptor ``fd`` (1 or 2) at /dev/null for the scope: native libraries (MediaPipe's
    C++ side, Blender) write there whatever Python's sys.stdout / sys.stderr say, which stay untouched."""
    (sys.stdout if fd == 1 else sys.stderr).flush()
    try:
        saved = os.dup(fd)
    except OSError:  # no real descriptor (embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
