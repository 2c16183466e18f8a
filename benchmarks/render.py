"""Rendering speed: frames per second for a 120-frame clip (4 s at 30 fps) at 256² and 512².

    python -m benchmarks.render                      # CPU (OSMesa), this process pinned to one core
    python -m benchmarks.render --cores all          # CPU, every core
    RENDER_GL_PLATFORM=egl python -m benchmarks.render --processes 1 2 4 8   # GPU (EGL)

Compared in the same run, on the same rig and sequence:

* ``naive``     — what a user writes with pyrender: a new trimesh mesh, ``pyrender.Mesh`` and
  ``Scene`` per frame, ``OffscreenRenderer.render`` (one renderer kept).
* ``inplace``   — one pyrender scene, the vertex buffer rewritten in place per frame, still the
  stock ``render()`` (PBR shader, depth read-back every frame).
* ``fast``      — ``rendering.renderer.FaceRenderer``: in place, lean draw loop, per-vertex clay
  shading, ``tiles`` frames per draw (``fast_1tile`` with one frame per draw).

Each is timed rendering alone and rendering + encoding (H.264 MP4, the encoder the platform
uses). ``--processes N`` runs N renderer processes at once (each its own GL context; on EGL the
GPUs are shared round robin) and reports the aggregate. Floors measured here: the rasteriser's
per-frame geometry cost (a 32² frame), x264 alone on pre-rendered frames.

Results: benchmarks/results/render.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine_info, write_results

FPS = 30.0


def _sequence(layout, n: int, seed: int = 0) -> np.ndarray:
    """A lively 4 s listener: every dimension moving inside its range."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None] / FPS
    phase = rng.uniform(0, 2 * np.pi, layout.width)
    freq = rng.uniform(0.2, 1.2, layout.width)
    mid, half = (layout.low + layout.high) / 2, (layout.high - layout.low) / 2
    return (mid + 0.6 * half * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the encoders)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn, frames: int, repeats: int) -> dict:
    fn()  # warm-up: shader compilation, first allocations
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = _cpu(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu() - c0)
    wall = statistics.median(walls)
    cpu = statistics.median(cpus)
    return {
        "frames": frames,
        "seconds_median": round(wall, 4),
        "seconds_all": [round(w, 4) for w in walls],
        "fps": round(frames / wall, 1),
        "cpu_ms_per_frame": round(1000 * cpu / frames, 3),
        # Frames per CPU-second (this process and its encoders): what one core delivers when
        # nothing else runs on it; steadier than wall time on a shared machine.
        "fps_per_cpu_second": round(frames / cpu, 1) if cpu > 0 else None,
    }


# --- the alternatives ---------------------------------------------------------------------------


class Naive:
    """New mesh and scene per frame, stock pyrender render()."""

    def __init__(self, rig, settings) -> None:
        import pyrender

        self.pyrender, self.rig, self.settings = pyrender, rig, settings
        self.r = pyrender.OffscreenRenderer(settings.width, settings.height)
        f = rig.framing
        self.camera = pyrender.OrthographicCamera(xmag=f.half_extent, ymag=f.half_extent,
                                                  znear=0.01, zfar=2 * f.depth)
        self.pose = np.eye(4)
        self.pose[:3, 3] = (f.center[0], f.center[1], f.center[2] + f.depth)
        self.colors = np.concatenate([rig.colors * rig.ao[:, None], np.ones((rig.n_vertices, 1))],
                                     axis=1)

    def frames(self, coeffs):
        import trimesh

        pr = self.pyrender
        for t in range(len(coeffs)):
            verts = self.rig.mesh_batch(coeffs[t: t + 1])[0, :, :3]
            tm = trimesh.Trimesh(vertices=verts, faces=self.rig.faces,
                                 vertex_colors=self.colors, process=False)
            scene = pr.Scene(bg_color=(*self.settings.background, 1.0),
                             ambient_light=(0.35, 0.35, 0.35))
            scene.add(pr.Mesh.from_trimesh(tm, smooth=True))
            scene.add(self.camera, pose=self.pose)
            scene.add(pr.DirectionalLight(intensity=3.0), pose=self.pose)
            yield self._rgba(self.r.render(scene, flags=pr.RenderFlags.RGBA)[0])

    @staticmethod
    def _rgba(color: np.ndarray) -> np.ndarray:
        if color.shape[-1] == 3:  # OSMesa's pyrender path reads RGB only
            color = np.concatenate([color, np.full(color.shape[:2] + (1,), 255, np.uint8)], -1)
        return color[None]

    def close(self) -> None:
        self.r.delete()


class InPlace(Naive):
    """One scene, vertex buffer rewritten in place, stock render() per frame."""

    def __init__(self, rig, settings) -> None:
        super().__init__(rig, settings)
        pr = self.pyrender
        rest = rig.mesh_batch(np.zeros((1, rig.layout.width), np.float32))[0]
        self.data = np.zeros((rig.n_vertices, 10), np.float32)
        self.data[:, :6] = rest
        self.data[:, 6:] = self.colors
        self.prim = pr.Primitive(positions=self.data[:, :3], normals=self.data[:, 3:6],
                                 color_0=self.data[:, 6:], indices=rig.faces)
        self.scene = pr.Scene(bg_color=(*settings.background, 1.0),
                              ambient_light=(0.35, 0.35, 0.35))
        self.scene.add(pr.Mesh([self.prim]))
        self.scene.add(self.camera, pose=self.pose)
        self.scene.add(pr.DirectionalLight(intensity=3.0), pose=self.pose)
        self.r.render(self.scene)  # puts the primitive into the context

    def frames(self, coeffs):
        from OpenGL import GL as gl

        for t in range(len(coeffs)):
            self.data[:, :6] = self.rig.mesh_batch(coeffs[t: t + 1])[0]
            self.r._platform.make_current()
            gl.glBindBuffer(gl.GL_ARRAY_BUFFER, self.prim._buffers[0])
            gl.glBufferSubData(gl.GL_ARRAY_BUFFER, 0, self.data.nbytes, self.data)
            yield self._rgba(self.r.render(self.scene, flags=self.pyrender.RenderFlags.RGBA)[0])


class Fast:
    def __init__(self, rig, settings, tiles) -> None:
        from rendering.renderer import FaceRenderer

        self.fr = FaceRenderer(rig, settings, tiles=tiles)

    def frames(self, coeffs):
        yield from self.fr.render_batches(coeffs)

    def close(self) -> None:
        self.fr.close()


def _render_only(impl, coeffs):
    def run():
        for _ in impl.frames(coeffs):
            pass
    return run


def _render_encode(impl, coeffs, settings, threads, tmp):
    from rendering.encode import VideoWriter, png_bytes

    def run():
        out = Path(tmp) / "bench.mp4"
        with VideoWriter(out, width=settings.width, height=settings.height, fps=FPS,
                         crf=settings.crf, preset=settings.preset, threads=threads) as w:
            done = 0
            for batch in impl.frames(coeffs):
                if done <= len(coeffs) // 2 < done + len(batch):
                    png_bytes(batch[len(coeffs) // 2 - done])  # the poster, as a clip has
                w.write(batch)
                done += len(batch)
        out.unlink()
    return run


def _encode_only(frames: np.ndarray, settings, threads, tmp):
    from rendering.encode import VideoWriter

    def run():
        out = Path(tmp) / "enc.mp4"
        with VideoWriter(out, width=settings.width, height=settings.height, fps=FPS,
                         crf=settings.crf, preset=settings.preset, threads=threads) as w:
            w.write(frames)
        out.unlink()
    return run


def bench_size(rig, size: int, args, tmp: str) -> dict:
    from rendering.renderer import FaceRenderer, RenderSettings, default_tiles

    settings = RenderSettings(width=size, height=size)
    coeffs = _sequence(rig.layout, args.frames)
    tiles = args.tiles or default_tiles(size)
    threads = args.encoder_threads
    out: dict = {"size": size, "tiles": tiles}
    naive_n = min(args.naive_frames, args.frames)
    naive_coeffs = coeffs[:naive_n]

    impl = Naive(rig, settings)
    out["naive"] = {"render": _timed(_render_only(impl, naive_coeffs), naive_n, args.repeats),
                    "render_encode": _timed(_render_encode(impl, naive_coeffs, settings, threads,
                                                           tmp), naive_n, args.repeats)}
    impl.close()
    impl = InPlace(rig, settings)
    out["inplace"] = {"render": _timed(_render_only(impl, naive_coeffs), naive_n, args.repeats)}
    impl.close()
    for label, t in (("fast_1tile", 1), ("fast", tiles)):
        impl = Fast(rig, settings, t)
        out[label] = {"render": _timed(_render_only(impl, coeffs), args.frames, args.repeats)}
        if label == "fast":
            out[label]["render_encode"] = _timed(
                _render_encode(impl, coeffs, settings, threads, tmp), args.frames, args.repeats)
            # The same with a slower preset that makes ~30 % smaller files.
            smaller = settings.replace(preset="superfast")
            out[label]["render_encode_superfast"] = _timed(
                _render_encode(impl, coeffs, smaller, threads, tmp), args.frames, args.repeats)
            frames = np.concatenate([b.copy() for b in impl.frames(coeffs)])
            out["encode_only"] = _timed(_encode_only(frames, settings, threads, tmp),
                                        args.frames, args.repeats)
        impl.close()
    # The rasteriser's per-frame cost without pixels: the same draw at 32².
    with FaceRenderer(rig, RenderSettings(width=32, height=32), tiles=tiles) as tiny:
        out["geometry_floor_32px"] = _timed(lambda: [None for _ in tiny.render_batches(coeffs)],
                                            args.frames, args.repeats)
    t0 = time.perf_counter()
    for s in range(0, len(coeffs), tiles):
        rig.mesh_batch(coeffs[s: s + tiles])
    out["rig_ms_per_frame"] = round(1000 * (time.perf_counter() - t0) / len(coeffs), 3)
    fast = out["fast"]
    out["speedup_render_vs_naive"] = round(fast["render"]["fps"] / out["naive"]["render"]["fps"], 1)
    out["speedup_end_to_end_vs_naive"] = round(
        fast["render_encode"]["fps"] / out["naive"]["render_encode"]["fps"], 1)
    return out


# --- several renderer processes ---------------------------------------------------------------


def _worker(index, size, frames, clips, tiles, threads, platform, start, queue):
    os.environ["PYOPENGL_PLATFORM"] = platform
    os.environ.setdefault("EGL_DEVICE_ID", str(index % max(1, int(os.environ.get("N_GPUS", 1)))))
    from rendering.renderer import FaceRenderer, RenderSettings
    from rendering.rigs import get_rig

    rig = get_rig("builtin")
    settings = RenderSettings(width=size, height=size)
    coeffs = _sequence(rig.layout, frames, seed=index)
    with tempfile.TemporaryDirectory() as tmp, FaceRenderer(rig, settings, tiles=tiles) as fr:
        impl = Fast.__new__(Fast)
        impl.fr = fr
        render = _render_only(impl, coeffs)
        encode = _render_encode(impl, coeffs, settings, threads, tmp)
        render()
        encode()
        results = {}
        for label, fn in (("render", render), ("render_encode", encode)):
            start.wait()
            t0 = time.perf_counter()
            for _ in range(clips):
                fn()
            results[label] = time.perf_counter() - t0
        queue.put((index, results))


def bench_processes(size: int, n: int, args, encoder_threads: int) -> dict:
    import multiprocessing as mp

    from rendering.renderer import default_tiles

    ctx = mp.get_context("spawn")
    start = ctx.Barrier(n)
    queue = ctx.Queue()
    tiles = args.tiles or default_tiles(size)
    procs = [ctx.Process(target=_worker, args=(i, size, args.frames, args.clips, tiles,
                                               encoder_threads, args.platform, start, queue))
             for i in range(n)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    out = {"processes": n, "size": size, "clips_per_process": args.clips, "tiles": tiles,
           "encoder_threads": encoder_threads}
    total = n * args.clips * args.frames
    for label in ("render", "render_encode"):
        wall = max(r[label] for _, r in results)
        out[label] = {"frames": total, "seconds": round(wall, 3), "fps": round(total / wall, 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--naive-frames", type=int, default=40,
                        help="frames for the naive loops (they are slow)")
    parser.add_argument("--tiles", type=int, default=0, help="frames per draw (0: by size)")
    parser.add_argument("--cores", default="1",
                        help="'1': pin to one core (with LP_NUM_THREADS=0, x264 one thread); "
                             "'all': no pinning")
    parser.add_argument("--encoder-threads", type=int, default=None)
    parser.add_argument("--processes", type=int, nargs="*", default=[],
                        help="also run N renderer processes at once (aggregate fps)")
    parser.add_argument("--clips", type=int, default=4, help="clips per process (--processes)")
    parser.add_argument("--platform", default=os.environ.get("RENDER_GL_PLATFORM", ""))
    parser.add_argument("--out", help="results file (default benchmarks/results/render.json)")
    args = parser.parse_args()

    one_core = args.cores == "1"
    if os.environ.get("_BENCH_SETUP") != "1":
        # Start again with the environment set before NumPy loads: one BLAS thread (the rig's
        # products are small; more threads only spin, and with several renderer processes
        # they oversubscribe the cores), and on one core the pinning, which the threads that
        # libraries start at import would otherwise escape. Children inherit both.
        env = dict(os.environ, _BENCH_SETUP="1", OPENBLAS_NUM_THREADS="1",
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        if one_core:
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
            env["LP_NUM_THREADS"] = "0"  # llvmpipe rasterises in the calling thread
        os.execve(sys.executable,  # noqa: S606 - re-running this very benchmark
                  [sys.executable, "-m", "benchmarks.render", *sys.argv[1:]], env)
    # One x264 thread per encoder on one core and beside several renderer processes (each has
    # its own encoder); a single renderer on all cores lets x264 choose.
    proc_encoder_threads = 1 if args.encoder_threads is None else args.encoder_threads
    if args.encoder_threads is None:
        args.encoder_threads = 1 if one_core else 0
    from rendering.renderer import select_gl_platform

    args.platform = select_gl_platform(args.platform or None)
    from rendering.encode import ffmpeg_version
    from rendering.renderer import FaceRenderer, RenderSettings
    from rendering.rigs import get_rig

    t0 = time.perf_counter()
    rig = get_rig("builtin")
    build_s = time.perf_counter() - t0
    with FaceRenderer(rig, RenderSettings(width=32, height=32), tiles=1) as probe:
        gl = {"renderer": probe.gl_renderer, "version": probe.gl_version}
    result = {
        "benchmark": "render",
        "machine": machine_info(gl=gl, gl_platform=args.platform, ffmpeg=ffmpeg_version(),
                                lp_num_threads=os.environ.get("LP_NUM_THREADS"),
                                pinned_to_one_core=one_core),
        "inputs": {"frames": args.frames, "fps": FPS, "sizes": args.sizes,
                   "naive_frames": args.naive_frames, "repeats": args.repeats,
                   "rig": "builtin", "vertices": rig.n_vertices, "triangles": int(len(rig.faces)),
                   "encoder": "libx264 (preset and crf of RenderSettings) yuv420p +faststart",
                   "preset": RenderSettings().preset, "crf": RenderSettings().crf,
                   "encoder_threads": args.encoder_threads, "rig_build_s": round(build_s, 2)},
        "sizes": {},
        "processes": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-render-") as tmp:
        for size in args.sizes:
            print(f"size {size}² …", flush=True)
            result["sizes"][str(size)] = bench_size(rig, size, args, tmp)
    for n in args.processes:
        for size in args.sizes:
            print(f"{n} processes at {size}² …", flush=True)
            result["processes"].append(bench_processes(size, n, args, proc_encoder_threads))
    result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    path = write_results("render", result, args.out)

    print(f"\nrender benchmark: {args.platform} ({gl['renderer']}), "
          f"{'one core' if one_core else 'all cores'}, {args.frames} frames")
    print("(fps: wall clock; per CPU s: frames per second of CPU time, encoders included)")
    print(f"{'size':>6} {'variant':<12} {'render fps':>11} {'per CPU s':>10} "
          f"{'+encode fps':>12} {'per CPU s':>10}")
    for size, r in result["sizes"].items():
        for label in ("naive", "inplace", "fast_1tile", "fast"):
            row = r[label]
            enc = row.get("render_encode", {})
            print(f"{size:>6} {label:<12} {row['render']['fps']:>11} "
                  f"{row['render']['fps_per_cpu_second']!s:>10} {enc.get('fps', '')!s:>12} "
                  f"{enc.get('fps_per_cpu_second', '')!s:>10}")
        print(f"{size:>6} {'encode only':<12} {'':>11} {r['encode_only']['fps']:>12}")
        print(f"{size:>6} {'fast superf.':<12} {'':>11} "
              f"{r['fast']['render_encode_superfast']['fps']:>12}")
        print(f"{size:>6} speed-up vs naive: render {r['speedup_render_vs_naive']}x, "
              f"end to end {r['speedup_end_to_end_vs_naive']}x")
    for p in result["processes"]:
        print(f"{p['processes']:>3} processes {p['size']}²: render {p['render']['fps']} fps, "
              f"render+encode {p['render_encode']['fps']} fps")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
