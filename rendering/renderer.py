"""Offscreen rendering of expression sequences with pyrender: fixed camera, lights and framing.

Why it is fast (see docs/rendering.md for the measurements):

* **One scene, buffers updated in place.** The face is a pyrender ``Primitive`` added to one GL
  context once; each batch of frames rewrites its vertex buffer with ``glBufferSubData``.
  Nothing is re-created per frame: no mesh, no scene, no shader, no framebuffer.
* **Several frames per draw.** The vertex buffer holds one copy of the face per frame of a
  batch ("tiles"); the vertex shader moves copy *i* down by *i* frame heights and clips it to
  its own band, so one draw and one read-back produce a column of frames. The camera is
  orthographic and the lights directional, so every tile is lit and framed exactly as a single
  frame would be. Frames come out top-down, one after the other in memory: a batch is already
  raw video that the encoder reads without copying.
* **No per-frame work pyrender would repeat.** The stock ``OffscreenRenderer.render`` re-binds
  lights and materials, re-sorts nodes and reads and linearises the depth buffer on every
  call. Here uniforms are set once and only the colour buffer is read.
* **Cheap shading.** A small clay shader (``shaders/clay.*``) lit per vertex: two directional
  lights, hemisphere ambient with baked occlusion, a faint highlight and a rim. Per-vertex
  lighting looks the same as per-pixel on this mesh at clip sizes and costs the software
  rasteriser a fraction. Normals come from the rig's normal deltas: no per-frame pass over
  the faces.

The OpenGL platform is OSMesa (CPU) or EGL (GPU); ``select_gl_platform`` must run before anything
imports OpenGL. This module does not import Django.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rendering.rigs.base import Rig

SHADER_DIR = Path(__file__).resolve().parent / "shaders"

# Grey clay for candidates; the speaker is drawn in another colour so that a rater never mixes
# up the two.
CLAY = (0.80, 0.77, 0.74)
SPEAKER_BLUE = (0.60, 0.72, 0.86)
BACKGROUND = (0.93, 0.93, 0.94)

# Lights, in the camera's frame (the camera looks down −z; +x right, +y up).
_KEY_DIR = (-0.45, 0.55, 0.70)
_FILL_DIR = (0.70, 0.05, 0.55)
_KEY_COLOR = (0.62, 0.61, 0.60)
_FILL_COLOR = (0.20, 0.21, 0.23)
_SKY = (0.40, 0.41, 0.43)
_GROUND = (0.22, 0.21, 0.20)
_SPEC = 0.06
_RIM = 0.10

# Stacked frames per draw, by frame height; measured on llvmpipe (docs/rendering.md). The canvas
# is at most 4096 px tall, well inside every GL's limit (16384 on llvmpipe and NVIDIA).
_MAX_CANVAS = 4096


class RenderError(RuntimeError):
    """The renderer could not be set up or failed (no GL platform, bad settings)."""


@dataclass(frozen=True)
class RenderSettings:
    """Everything that decides how a clip looks; part of the clip's content hash.

    Performance knobs (tiles, platform, encoder threads) are not here: they never change pixels.
    """

    width: int = 256
    height: int = 256
    face_color: tuple[float, float, float] = CLAY
    background: tuple[float, float, float] = BACKGROUND
    msaa: int = 0  # multisample anti-aliasing samples (0 = off); costly on CPU
    crf: int = 20  # x264 constant rate factor (lower = better, larger files)
    # x264 preset. ultrafast: the cheapest encode (~0.7 ms a 256² frame on one core); files
    # ~1.4x those of superfast at the same CRF, still ~60 KB per second of 256² video.
    preset: str = "ultrafast"
    extra: dict = field(default_factory=dict)  # reserved for future settings; hashed too

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 16 <= value <= 4096 or value % 2:
                raise ValueError(f"render settings: {name} must be an even integer in "
                                 f"16..4096, got {value!r}")
        if self.msaa not in (0, 2, 4, 8):
            raise ValueError(f"render settings: msaa must be 0, 2, 4 or 8, got {self.msaa!r}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"render settings: crf must be in 0..51, got {self.crf!r}")
        for name in ("face_color", "background"):
            value = getattr(self, name)
            if len(value) != 3 or not all(0.0 <= float(c) <= 1.0 for c in value):
                raise ValueError(f"render settings: {name} must be three values in [0, 1]")
            object.__setattr__(self, name, tuple(float(c) for c in value))

    def as_dict(self) -> dict:
        out = asdict(self)
        out["face_color"] = list(self.face_color)
        out["background"] = list(self.background)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> RenderSettings:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"render settings: unknown field(s) {', '.join(unknown)}")
        for name in ("face_color", "background"):
            if name in known:
                known[name] = tuple(known[name])
        return cls(**known)

    def replace(self, **changes) -> RenderSettings:
        return RenderSettings.from_dict({**self.as_dict(), **changes})


def select_gl_platform(preferred: str | None = None) -> str:
    """Choose PyOpenGL's platform (``osmesa`` or ``egl``) and return it.

    Order: ``preferred`` (from the ``RENDER_GL_PLATFORM`` setting), then ``PYOPENGL_PLATFORM``
    already in the environment, then EGL where an NVIDIA device is present, else OSMesa.
    PyOpenGL fixes its platform when first imported, so asking for another one afterwards is an
    error rather than a silent mismatch.
    """
    current = os.environ.get("PYOPENGL_PLATFORM", "")
    choice = (preferred or current or "").strip().lower()
    if not choice:
        choice = "egl" if Path("/dev/nvidiactl").exists() else "osmesa"
    if choice not in ("osmesa", "egl"):
        raise RenderError(f"unsupported GL platform {choice!r} (use 'osmesa' or 'egl')")
    if "OpenGL.GL" in sys.modules and current and current != choice:
        raise RenderError(
            f"OpenGL was already loaded for {current!r} in this process; cannot switch to "
            f"{choice!r} (set RENDER_GL_PLATFORM / PYOPENGL_PLATFORM before starting)"
        )
    os.environ["PYOPENGL_PLATFORM"] = choice
    if choice == "egl":
        # pyrender imports its viewer, hence pyglet's window module, which wants X11 unless
        # pyglet runs headless (on EGL); GPU hosts usually have no X libraries.
        os.environ.setdefault("PYGLET_HEADLESS", "true")
    loaded = sys.modules.get("OpenGL.platform")
    if loaded is not None:  # OpenGL was imported before: its platform is fixed already
        name = type(getattr(loaded, "PLATFORM", None)).__name__.lower()
        if choice not in name:
            raise RenderError(
                f"OpenGL was loaded with {name or 'an unknown platform'} before the renderer "
                f"could select {choice!r}; set PYOPENGL_PLATFORM={choice} before importing it"
            )
    return choice


def default_tiles(height: int) -> int:
    return max(1, min(16, _MAX_CANVAS // height))


class FaceRenderer:
    """Renders one rig with one set of settings; reuse it for many clips.

    ``render_batches(coeffs)`` yields ``(n, height, width, 4)`` uint8 RGBA arrays, ``n ≤ tiles``,
    in frame order. Each yielded array is a view of the renderer's read-back buffer and is only
    valid until the next batch: copy it (or write it to the encoder) before asking for more.
    Coefficients must already be sanitised (``rendering.rigs.base.sanitize_coefficients``).
    """

    def __init__(self, rig: Rig, settings: RenderSettings | None = None, *,
                 tiles: int | None = None, platform: str | None = None) -> None:
        self.rig = rig
        self.settings = settings or RenderSettings()
        self.platform = select_gl_platform(platform)
        self.tiles = int(tiles or default_tiles(self.settings.height))
        if self.tiles < 1 or self.tiles * self.settings.height > 16384:
            raise RenderError(f"tiles={self.tiles} does not fit a {self.settings.height}px frame")
        try:
            self._setup()
        except RenderError:
            raise
        except Exception as exc:  # GL platform missing, context creation failed …
            raise RenderError(f"could not start the {self.platform} renderer: {exc}") from exc

    # --- set-up ---------------------------------------------------------------------------
    def _setup(self) -> None:
        import pyrender
        from OpenGL import GL as gl
        from pyrender.shader_program import ShaderProgramCache

        self._gl = gl
        s, rig = self.settings, self.rig
        w, h, n = s.width, s.height, self.tiles
        self._offscreen = pyrender.OffscreenRenderer(w, h * n)
        self._platform = self._offscreen._platform
        self._platform.make_current()

        nv = rig.n_vertices
        self._nv = nv
        # The interleaved vertex layout pyrender gives a primitive with positions, normals,
        # texcoord_0 and color_0: 12 floats per vertex. Columns 0:6 change per frame.
        self._vertex_data = np.zeros((n, nv, 12), dtype=np.float32)
        self._vertex_data[:, :, 6] = rig.ao
        self._vertex_data[:, :, 8:11] = rig.colors
        self._vertex_data[:, :, 11] = rig.skin
        rest = rig.mesh_batch(np.zeros((1, rig.layout.width), np.float32))[0]
        self._vertex_data[:, :, 0:6] = rest
        faces = rig.faces.astype(np.uint32)
        self._index_count = faces.size  # indices per tile
        indices = faces[None] + (np.arange(n, dtype=np.uint32) * nv)[:, None, None]
        flat = self._vertex_data.reshape(-1, 12)
        self._primitive = pyrender.Primitive(
            positions=flat[:, 0:3], normals=flat[:, 3:6], texcoord_0=flat[:, 6:8],
            color_0=flat[:, 8:12], indices=indices.reshape(-1, 3), mode=pyrender.GLTF.TRIANGLES,
        )
        # The scene documents the fixed set-up (one mesh, an orthographic camera, two lights);
        # the draw loop below reads its camera and issues the draw itself.
        f = rig.framing
        self.scene = pyrender.Scene(bg_color=(*s.background, 1.0), ambient_light=_SKY)
        self.scene.add(pyrender.Mesh([self._primitive]))
        camera_pose = np.eye(4)
        camera_pose[:3, 3] = (f.center[0], f.center[1], f.center[2] + f.depth)
        self.camera = pyrender.OrthographicCamera(
            xmag=f.half_extent * w / h, ymag=f.half_extent, znear=0.01, zfar=2 * f.depth)
        self.scene.add(self.camera, pose=camera_pose)
        self._primitive._add_to_context()
        self._vbo = self._primitive._buffers[0]

        cache = ShaderProgramCache(shader_dir=str(SHADER_DIR))
        self._program_cache = cache
        self._program = cache.get_program(vertex_shader="clay.vert", fragment_shader="clay.frag")
        self._program._add_to_context()
        self._program._bind()
        p = self._program
        # Orthographic projection of the whole column of tiles, rows top-down (y flipped).
        half_w = f.half_extent * w / h
        tile_h = 2.0 * f.half_extent
        top = f.center[1] + f.half_extent
        mid_y = top - n * f.half_extent
        proj = np.zeros((4, 4), dtype=np.float64)
        proj[0, 0], proj[0, 3] = 1.0 / half_w, -f.center[0] / half_w
        proj[1, 1], proj[1, 3] = -1.0 / (n * f.half_extent), mid_y / (n * f.half_extent)
        proj[2, 2], proj[2, 3] = -1.0 / f.depth, f.center[2] / f.depth
        proj[3, 3] = 1.0
        p.set_uniform("P", proj)
        p.set_uniform("verts_per_tile", int(nv))
        p.set_uniform("tile_height", float(tile_h))
        p.set_uniform("tile_band", np.array([top - tile_h, top], dtype=np.float64))
        p.set_uniform("face_color", np.array(s.face_color))
        for name, value in (("key_dir", _KEY_DIR), ("fill_dir", _FILL_DIR)):
            v = np.asarray(value, dtype=np.float64)
            p.set_uniform(name, v / np.linalg.norm(v))
        for name, value in (("key_color", _KEY_COLOR), ("fill_color", _FILL_COLOR),
                            ("sky_color", _SKY), ("ground_color", _GROUND)):
            p.set_uniform(name, np.asarray(value, dtype=np.float64))
        p.set_uniform("spec_strength", float(_SPEC))
        p.set_uniform("rim_strength", float(_RIM))

        # Framebuffers: draw (multisampled if asked) and, with MSAA, a resolve target.
        self._fbos, self._rbos = [], []
        self._draw_fb = self._make_fbo(w, h * n, s.msaa)
        self._read_fb = self._make_fbo(w, h * n, 0) if s.msaa else self._draw_fb
        self._pixels = np.empty((n * h, w, 4), dtype=np.uint8)

        gl.glEnable(gl.GL_DEPTH_TEST)
        gl.glDepthFunc(gl.GL_LESS)
        gl.glEnable(gl.GL_CULL_FACE)
        gl.glCullFace(gl.GL_BACK)
        gl.glFrontFace(gl.GL_CW)  # the y flip mirrors winding on screen
        gl.glEnable(gl.GL_CLIP_DISTANCE0)
        gl.glEnable(gl.GL_CLIP_DISTANCE1)
        gl.glDisable(gl.GL_BLEND)
        gl.glPixelStorei(gl.GL_PACK_ALIGNMENT, 1)
        gl.glClearColor(*s.background, 1.0)
        self.gl_renderer = gl.glGetString(gl.GL_RENDERER).decode(errors="replace")
        self.gl_version = gl.glGetString(gl.GL_VERSION).decode(errors="replace")

    def _make_fbo(self, w: int, h: int, samples: int) -> int:
        gl = self._gl
        color, depth = gl.glGenRenderbuffers(2)
        for rb, fmt in ((color, gl.GL_RGBA8), (depth, gl.GL_DEPTH_COMPONENT24)):
            gl.glBindRenderbuffer(gl.GL_RENDERBUFFER, rb)
            if samples:
                gl.glRenderbufferStorageMultisample(gl.GL_RENDERBUFFER, samples, fmt, w, h)
            else:
                gl.glRenderbufferStorage(gl.GL_RENDERBUFFER, fmt, w, h)
        fb = gl.glGenFramebuffers(1)
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, fb)
        gl.glFramebufferRenderbuffer(gl.GL_FRAMEBUFFER, gl.GL_COLOR_ATTACHMENT0,
                                     gl.GL_RENDERBUFFER, color)
        gl.glFramebufferRenderbuffer(gl.GL_FRAMEBUFFER, gl.GL_DEPTH_ATTACHMENT,
                                     gl.GL_RENDERBUFFER, depth)
        status = gl.glCheckFramebufferStatus(gl.GL_FRAMEBUFFER)
        if status != gl.GL_FRAMEBUFFER_COMPLETE:
            raise RenderError(f"framebuffer incomplete (status {status:#x})")
        self._fbos.append(fb)
        self._rbos += [color, depth]
        return fb

    # --- drawing --------------------------------------------------------------------------
    def render_batches(self, coeffs: np.ndarray) -> Iterator[np.ndarray]:
        coeffs = np.ascontiguousarray(coeffs, dtype=np.float32)
        for start in range(0, len(coeffs), self.tiles):
            yield self._draw(coeffs[start: start + self.tiles])

    def _draw(self, chunk: np.ndarray) -> np.ndarray:
        gl, s, n = self._gl, self.settings, len(chunk)
        self._platform.make_current()
        self._vertex_data[:n, :, 0:6] = self.rig.mesh_batch(chunk)
        gl.glBindBuffer(gl.GL_ARRAY_BUFFER, self._vbo)
        gl.glBufferSubData(gl.GL_ARRAY_BUFFER, 0, n * self._nv * 48, self._vertex_data)
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, self._draw_fb)
        rows = n * s.height
        gl.glViewport(0, 0, s.width, self.tiles * s.height)
        gl.glClear(gl.GL_COLOR_BUFFER_BIT | gl.GL_DEPTH_BUFFER_BIT)
        self._program._bind()
        gl.glBindVertexArray(self._primitive._vaid)
        gl.glDrawElements(gl.GL_TRIANGLES, n * self._index_count, gl.GL_UNSIGNED_INT,
                          ctypes.c_void_p(0))
        if s.msaa:
            gl.glBindFramebuffer(gl.GL_READ_FRAMEBUFFER, self._draw_fb)
            gl.glBindFramebuffer(gl.GL_DRAW_FRAMEBUFFER, self._read_fb)
            gl.glBlitFramebuffer(0, 0, s.width, rows, 0, 0, s.width, rows,
                                 gl.GL_COLOR_BUFFER_BIT, gl.GL_NEAREST)
        gl.glBindFramebuffer(gl.GL_READ_FRAMEBUFFER, self._read_fb)
        gl.glReadPixels(0, 0, s.width, rows, gl.GL_RGBA, gl.GL_UNSIGNED_BYTE, self._pixels)
        return self._pixels[:rows].reshape(n, s.height, s.width, 4)

    def render(self, coeffs: np.ndarray) -> np.ndarray:
        """All frames as one ``(T, height, width, 3)`` uint8 array (tests, stills, posters)."""
        coeffs = np.asarray(coeffs, dtype=np.float32)
        out = np.empty((len(coeffs), self.settings.height, self.settings.width, 3), np.uint8)
        i = 0
        for batch in self.render_batches(coeffs):
            out[i: i + len(batch)] = batch[..., :3]
            i += len(batch)
        return out

    def close(self) -> None:
        if getattr(self, "_offscreen", None) is None:
            return
        gl = self._gl
        try:
            self._platform.make_current()
            gl.glDeleteFramebuffers(len(self._fbos), self._fbos)
            gl.glDeleteRenderbuffers(len(self._rbos), self._rbos)
            self._program_cache.clear()
            self._primitive.delete()
        finally:
            self._offscreen.delete()
            self._offscreen = None

    def __enter__(self) -> FaceRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
