"""viewer.html: one self-contained page (WebGL, no script or file fetched) showing the detailed mesh
under a light the user moves, a coarse / detailed toggle, and the photo beside it.

The meshes travel inside the page as base64 arrays (float32 positions, uint32 triangle indices);
both share one triangle list (the topology mesh and the subdivided coarse mesh it was moved from),
so the toggle swaps positions only. Normals are computed in the page (area-weighted, as in Python).
Drag: turn the face; shift-drag or the sliders: move the light; the button: coarse / detailed.
"""

from __future__ import annotations

import base64
import html
import json

import numpy as np

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { margin: 0; background: #222; color: #ddd; font: 14px sans-serif; }
#row { display: flex; gap: 12px; padding: 12px; align-items: flex-start; }
canvas { background: #101010; cursor: grab; }
#side { display: flex; flex-direction: column; gap: 8px; max-width: 420px; }
#side img { max-width: 420px; image-rendering: auto; }
label { display: flex; gap: 8px; align-items: center; }
button { font-size: 14px; padding: 4px 10px; }
</style></head>
<body><div id="row">
<canvas id="view" width="__W__" height="__H__"></canvas>
<div id="side">
<div><b>__TITLE__</b></div>
<button id="toggle">showing: detailed (click for coarse)</button>
<label>light azimuth <input id="az" type="range" min="-180" max="180" value="-35"></label>
<label>light elevation <input id="el" type="range" min="-89" max="89" value="35"></label>
<div>drag: turn &middot; shift-drag: move the light &middot; wheel: zoom</div>
<img id="photo" alt="the photo" src="data:image/png;base64,__PHOTO__">
<div id="status"></div>
</div></div>
<script id="mesh" type="application/json">__DATA__</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("mesh").textContent);
function bytes(b64) {
  const s = atob(b64), u = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) u[i] = s.charCodeAt(i);
  return u.buffer;
}
const faces = new Uint32Array(bytes(data.faces));
const shapes = { detailed: new Float32Array(bytes(data.detailed)), coarse: new Float32Array(bytes(data.coarse)) };
function normals(p) {
  const n = new Float32Array(p.length);
  for (let f = 0; f < faces.length; f += 3) {
    const a = 3 * faces[f], b = 3 * faces[f + 1], c = 3 * faces[f + 2];
    const ux = p[b] - p[a], uy = p[b + 1] - p[a + 1], uz = p[b + 2] - p[a + 2];
    const vx = p[c] - p[a], vy = p[c + 1] - p[a + 1], vz = p[c + 2] - p[a + 2];
    const x = uy * vz - uz * vy, y = uz * vx - ux * vz, z = ux * vy - uy * vx;
    for (const i of [a, b, c]) { n[i] += x; n[i + 1] += y; n[i + 2] += z; }
  }
  for (let i = 0; i < n.length; i += 3) {
    const l = Math.hypot(n[i], n[i + 1], n[i + 2]) || 1;
    n[i] /= l; n[i + 1] /= l; n[i + 2] /= l;
  }
  return n;
}
const canvas = document.getElementById("view");
const gl = canvas.getContext("webgl", { preserveDrawingBuffer: true, antialias: true });
const status = document.getElementById("status");
if (!gl || !gl.getExtension("OES_element_index_uint")) {
  status.textContent = "this browser has no WebGL (with 32-bit indices) to draw the mesh";
  throw new Error("no WebGL");
}
function shader(type, src) {
  const s = gl.createShader(type); gl.shaderSource(s, src); gl.compileShader(s);
  if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
  return s;
}
const prog = gl.createProgram();
gl.attachShader(prog, shader(gl.VERTEX_SHADER, `
attribute vec3 pos; attribute vec3 nrm; uniform mat4 mvp; uniform mat3 rot; varying vec3 n;
void main() { n = rot * nrm; gl_Position = mvp * vec4(pos, 1.0); }`));
gl.attachShader(prog, shader(gl.FRAGMENT_SHADER, `
precision mediump float; varying vec3 n; uniform vec3 light;
void main() {
  vec3 m = normalize(n); float d = max(dot(m, light), 0.0);
  float s = pow(max(dot(m, normalize(light + vec3(0.0, 0.0, 1.0))), 0.0), 40.0);
  vec3 clay = vec3(0.86, 0.80, 0.74);
  gl_FragColor = vec4(clay * (0.12 + 0.88 * d) + 0.12 * s, 1.0);
}`));
gl.linkProgram(prog); gl.useProgram(prog);
const buffers = {};
for (const [k, p] of Object.entries(shapes)) {
  const b = gl.createBuffer(); gl.bindBuffer(gl.ARRAY_BUFFER, b); gl.bufferData(gl.ARRAY_BUFFER, p, gl.STATIC_DRAW);
  const nb = gl.createBuffer(); gl.bindBuffer(gl.ARRAY_BUFFER, nb); gl.bufferData(gl.ARRAY_BUFFER, normals(p), gl.STATIC_DRAW);
  buffers[k] = [b, nb];
}
const ib = gl.createBuffer(); gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, ib); gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, faces, gl.STATIC_DRAW);
const lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity], q = shapes.detailed;
for (let i = 0; i < q.length; i++) { lo[i % 3] = Math.min(lo[i % 3], q[i]); hi[i % 3] = Math.max(hi[i % 3], q[i]); }
const centre = lo.map((v, i) => (v + hi[i]) / 2), radius = Math.hypot(...hi.map((v, i) => v - lo[i])) / 2;
let shown = "detailed", yaw = 0, pitch = 0, zoom = 1;
function mul(a, b) {  // 4x4, column-major
  const o = new Float32Array(16);
  for (let c = 0; c < 4; c++) for (let r = 0; r < 4; r++) {
    let s = 0; for (let k = 0; k < 4; k++) s += a[k * 4 + r] * b[c * 4 + k]; o[c * 4 + r] = s;
  }
  return o;
}
function draw() {
  const cy = Math.cos(yaw), sy = Math.sin(yaw), cp = Math.cos(pitch), sp = Math.sin(pitch);
  // the camera frame (x right, y down, z ahead) as GL's (x right, y up, z towards the viewer), turned
  const r = [cy, sy * sp, -sy * cp, 0, 0, cp, sp, 0, sy, -cy * sp, cy * cp, 0, 0, 0, 0, 1];
  const flip = [1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1];
  const move = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, -centre[0], -centre[1], -centre[2], 1];
  const dist = radius * 4.2 / zoom, f = 1 / Math.tan(0.26), asp = canvas.width / canvas.height;
  const near = dist - 2 * radius > 0.01 * dist ? dist - 2 * radius : 0.01 * dist, far = dist + 2 * radius;
  const proj = [f / asp, 0, 0, 0, 0, f, 0, 0, 0, 0, (far + near) / (near - far), -1, 0, 0, 2 * far * near / (near - far), 0];
  const back = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, -dist, 1];
  const model = mul(r, mul(flip, move));
  gl.uniformMatrix4fv(gl.getUniformLocation(prog, "mvp"), false, mul(proj, mul(back, model)));
  const m3 = [model[0], model[1], model[2], model[4], model[5], model[6], model[8], model[9], model[10]];
  gl.uniformMatrix3fv(gl.getUniformLocation(prog, "rot"), false, new Float32Array(m3));
  const az = document.getElementById("az").value * Math.PI / 180, el = document.getElementById("el").value * Math.PI / 180;
  gl.uniform3f(gl.getUniformLocation(prog, "light"), Math.cos(el) * Math.sin(az), Math.sin(el), Math.cos(el) * Math.cos(az));
  gl.viewport(0, 0, canvas.width, canvas.height); gl.enable(gl.DEPTH_TEST);
  gl.clearColor(0.063, 0.063, 0.063, 1); gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
  const [b, nb] = buffers[shown];
  for (const [name, buf] of [["pos", b], ["nrm", nb]]) {
    const loc = gl.getAttribLocation(prog, name);
    gl.bindBuffer(gl.ARRAY_BUFFER, buf); gl.enableVertexAttribArray(loc); gl.vertexAttribPointer(loc, 3, gl.FLOAT, false, 0, 0);
  }
  gl.drawElements(gl.TRIANGLES, faces.length, gl.UNSIGNED_INT, 0);
  status.textContent = `${shown}: ${q.length / 3} vertices, ${faces.length / 3} triangles`;
}
let drag = null;
canvas.addEventListener("mousedown", e => { drag = [e.clientX, e.clientY, e.shiftKey]; });
window.addEventListener("mouseup", () => { drag = null; });
window.addEventListener("mousemove", e => {
  if (!drag) return;
  const dx = e.clientX - drag[0], dy = e.clientY - drag[1];
  drag[0] = e.clientX; drag[1] = e.clientY;
  if (drag[2]) {
    const az = document.getElementById("az"), el = document.getElementById("el");
    az.value = +az.value + dx * 0.5; el.value = +el.value - dy * 0.5;
  } else {
    yaw += dx * 0.01; pitch = Math.max(-1.5, Math.min(1.5, pitch + dy * 0.01));
  }
  requestAnimationFrame(draw);
});
canvas.addEventListener("wheel", e => { e.preventDefault(); zoom *= Math.exp(-e.deltaY * 0.001); requestAnimationFrame(draw); });
for (const id of ["az", "el"]) document.getElementById(id).addEventListener("input", () => requestAnimationFrame(draw));
document.getElementById("toggle").addEventListener("click", e => {
  shown = shown === "detailed" ? "coarse" : "detailed";
  e.target.textContent = `showing: ${shown} (click for ${shown === "detailed" ? "coarse" : "detailed"})`;
  requestAnimationFrame(draw);
});
draw();
</script></body></html>
"""


def viewer_html(detailed_mm: np.ndarray, coarse_mm: np.ndarray, faces: np.ndarray, photo_png: bytes,
                title: str = "fastsider", size: tuple[int, int] = (720, 720)) -> str:
    """The page for two meshes of one triangle list (``detailed_mm`` and ``coarse_mm`` [n_verts, 3],
    camera frame; ``faces`` [n_faces, 3]) and the photo (PNG bytes); ``size``: the canvas, px."""
    if detailed_mm.shape != coarse_mm.shape or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"two [n_verts, 3] meshes of one [n_faces, 3] list expected, got {detailed_mm.shape}, "
                         f"{coarse_mm.shape}, {faces.shape}")

    def b64(a: np.ndarray, dtype: str) -> str:
        return base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode("ascii")

    data = json.dumps({"detailed": b64(detailed_mm, "<f4"), "coarse": b64(coarse_mm, "<f4"), "faces": b64(faces, "<u4")})
    return (PAGE.replace("__DATA__", data).replace("__PHOTO__", base64.b64encode(photo_png).decode("ascii"))
            .replace("__TITLE__", html.escape(title)).replace("__W__", str(size[0])).replace("__H__", str(size[1])))
