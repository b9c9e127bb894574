"""Outputs a graphics user opens directly: the detailed surface on the coarse mesh's own topology,
its UV atlas and texture maps, OBJ and glTF files.

Pure functions on arrays (meshes in mm, camera frame); the model enters only as an SDF callable,
so this package sits beside ``sdf/`` and ``io`` (layer 3) and ``stages/topology.py`` runs it.

- ``subdivision``: midpoint subdivision with the parents of every new vertex, area-weighted normals;
- ``displace``: each vertex moved along its normal onto the SDF's zero set (Newton on the line),
  the vertices the camera sees;
- ``uv``: a one-chart disk atlas (libigl's harmonic map, SLIM optional) or xatlas, carried through
  the subdivision;
- ``bake``: UV rasterization, displacement, tangent-space normal and photo-colour maps;
- ``formats``: OBJ + MTL (positions indexed apart from UVs, so the vertex order is the topology's),
  binary glTF (trimesh), 16-bit PNG;
- ``viewer``: viewer.html, a self-contained WebGL page (coarse / detailed, a movable light, the photo).
"""
