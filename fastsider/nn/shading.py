"""Shading models for ``albedo x shading`` rendering: how light reaches a surface point of normal n.

Both take (albedo [n, 3], unit normals [n, 3], view directions [n, 3]) -> rgb [n, 3] and learn
their light from the photo.

- ``SphericalHarmonicsShading`` (``albedo_sh``): a 2nd-order SH irradiance per channel, the face
  capture default for smooth environment light. It cannot make a clamped cosine's shading edge,
  nor a highlight: under one dominant light its residual runs over the whole face in the shape of
  the face, and a height map bends the face at large scale to explain it.
- ``DirectionalShading`` (``albedo_directional``): one distant light plus ambient, Lambertian
  diffuse and a white Blinn-Phong sheen (skin's oily layer reflects the light's own colour). Under
  a single dominant light its residual is the image noise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

N_SH = 9  # real spherical harmonics up to order 2


def sh_basis(n: Tensor) -> Tensor:
    """Unnormalized real SH basis up to order 2 of unit normals [n_pts, 3] -> [n_pts, 9]."""
    x, y, z = n.unbind(-1)
    return torch.stack([torch.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y, 3.0 * z * z - 1.0], dim=-1)


class SphericalHarmonicsShading(torch.nn.Module):
    """rgb = albedo * max(SH2(n) . c, 0), 9 coefficients c per channel."""

    def __init__(self) -> None:
        super().__init__()
        # shading starts as a constant 1 (albedo explains the image); light is learned from there
        self.sh = torch.nn.Parameter(torch.zeros(3, N_SH).index_fill_(1, torch.tensor([0]), 1.0))

    def forward(self, albedo: Tensor, normals: Tensor, view_dirs: Tensor) -> Tensor:
        return albedo * (sh_basis(normals) @ self.sh.T).clamp_min(0.0)

    @torch.no_grad()
    def summary(self) -> dict[str, object]:
        """The fitted light, for the run's JSON summary."""
        return {"sh_coefficients_rgb": [[round(float(v), 4) for v in row] for row in self.sh]}


class DirectionalShading(torch.nn.Module):
    """rgb = albedo * (ambient + diffuse * max(n.l, 0)) + specular * max(n.h, 0)^shininess [n.l > 0].

    l: unit vector towards the light (camera frame), h: the half vector between l and the eye.
    Ambient and diffuse are RGB (the light's colour); the sheen is white, its strength and
    exponent learned (positive: the strength as |parameter|, the exponent as exp). Starts lit from
    the camera with half the light ambient and a faint sheen (|0| would have no gradient).

    Args:
        shininess: initial Blinn-Phong exponent.
        specular: False: no sheen term (matte skin, or a photo with the highlights masked).
    """

    def __init__(self, shininess: float = 20.0, specular: bool = True) -> None:
        super().__init__()
        self.light = torch.nn.Parameter(torch.tensor([0.0, 0.0, -1.0]))
        self.ambient = torch.nn.Parameter(torch.full((3,), 0.5))
        self.diffuse = torch.nn.Parameter(torch.full((3,), 0.5))
        self.specular = torch.nn.Parameter(torch.full((1,), 0.01)) if specular else None
        self.log_shininess = torch.nn.Parameter(torch.tensor(math.log(shininess))) if specular else None

    def warm_up(self, normals: Tensor, view_dirs: Tensor, colors: Tensor, mean_albedo: Tensor, steps: int,
                lr: float = 0.02) -> float:
        """Fit the light alone to a photo's pixels [n, 3] over a known surface, one albedo for all,
        then express it for an albedo that starts at ``mean_albedo`` [3]. A fine albedo learning
        together with a light still at its start takes the large-scale shading the light should
        have made. Returns the final mean |error|."""
        params = [p for p in (self.light, self.ambient, self.diffuse, self.specular, self.log_shininess) if p is not None]
        opt = torch.optim.Adam(params, lr=lr)
        ones = torch.ones(1, 3, dtype=colors.dtype, device=colors.device)
        for _ in range(steps):
            loss = (self(ones, normals, view_dirs) - colors).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            self.ambient.div_(mean_albedo)
            self.diffuse.div_(mean_albedo)
        return loss.item()

    def light_direction(self) -> Tensor:
        """Unit vector towards the light [3]."""
        return torch.nn.functional.normalize(self.light, dim=0)

    def forward(self, albedo: Tensor, normals: Tensor, view_dirs: Tensor, visibility: Tensor | None = None) -> Tensor:
        """``visibility`` [n]: the share of the light reaching each point (cast shadows), None: all."""
        light = self.light_direction()
        cos_light = normals @ light
        direct = cos_light.clamp_min(0.0) if visibility is None else cos_light.clamp_min(0.0) * visibility
        rgb = albedo * (self.ambient + self.diffuse * direct[:, None])
        if self.specular is not None:
            half = torch.nn.functional.normalize(light - view_dirs, dim=-1)  # view_dirs point away from the eye
            cos_half = (normals * half).sum(-1).clamp(1e-6, 1.0)
            sheen = cos_half ** self.log_shininess.exp() * (cos_light > 0)
            if visibility is not None:
                sheen = sheen * visibility
            rgb = rgb + self.specular.abs() * sheen[:, None]
        return rgb

    @torch.no_grad()
    def summary(self) -> dict[str, object]:
        """The fitted light, for the run's JSON summary."""
        out: dict[str, object] = {"light_direction": [round(float(v), 4) for v in self.light_direction()],
                                  "ambient_rgb": [round(float(v), 4) for v in self.ambient],
                                  "diffuse_rgb": [round(float(v), 4) for v in self.diffuse]}
        if self.specular is not None:
            out["specular"] = round(float(self.specular.abs()), 4)
            out["shininess"] = round(float(self.log_shininess.exp()), 2)
        return out
