"""Sampling with static shapes: the closed loop of :mod:`sample` as one fixed-shape step, which
CUDA replays from a graph.

The loop engine (:func:`policy.ml.sample._sample_group`) grows its key/value cache with
``torch.cat`` and cuts its inputs with index tensors built in Python, so every step launches a few
hundred small kernels of changing shapes, and a GPU waits on the launches rather than on the
arithmetic. This engine draws the same candidates another way:

* every layer's keys and values live in a preallocated ring of ``context - 1 + chunk`` slots
  (:class:`policy.ml.model.RingCache`), position p in slot p % size; a slot-position tensor masks
  the slots outside each query's window, so a step's shapes never change;
* the per-episode inputs are padded once to a multiple of the chunk and stay on the device; a step
  finds its frames by index arithmetic on a step-counter tensor (no ``.item()``, no shape that
  depends on data, no host sync), and writes the sampled ids and decoded actions into
  preallocated tensors.

Step 0 feeds frame 0 alone and runs eagerly. Every later step feeds frames start - chunk + 1 ..
start, reads the heads at start and draws frames start .. start + chunk - 1 (the last, partial
chunk is drawn whole and cut): identical shapes, so on CUDA one is captured in a
``torch.cuda.CUDAGraph`` and replayed per step; on the CPU the same step runs eagerly. Over
several passes (:func:`sample_passes_static`) a worker thread builds the next pass's host inputs
while the GPU samples the current one; the next pass's inputs go in, and the last pass's
candidates come out, on a side stream meanwhile.

On an H100 a step of 16k rows is then bound by the GPU, not by launches (eager and replayed steps
took the same time). In PyTorch most of it went to the 256-bin heads and the inverse-CDF draw,
several full passes over (rows, chunk, D, 256) float32 bins, 1.2 GB each (the cumulative sum
alone took 7 ms of a 37 ms step). On CUDA those passes are one kernel (:func:`draw`,
:mod:`policy.ml.kernels`) that keeps the logits in registers, and the attention of the step's
queries to the ring is one more (``kernels.ENABLED = False`` turns both off; ``top_p < 1``, a
sort, keeps PyTorch's draw).

The draws are the loop engine's: the same uniforms (:func:`sampling_noise`), the same inversion
(:func:`pick_bins`), the same decoded feedback. On the CPU the attention reads the ring in
position order and only the positions the loop's cache would hold, so the arithmetic -- and every
candidate -- is the loop engine's bit for bit (the CPU attention kernel rounds differently when
keys are reordered or masked ones added). On CUDA it reads the ring as it lies, masked, with the
attention written out for the chunk's few queries (:func:`policy.ml.model.attend_few`): the same
attention up to bf16 rounding, without copying the cache every step.

The draws themselves (episode seeds, uniforms, inverse CDF) live here too, so that :mod:`sample`,
which dispatches to this engine, imports this module and not the other way round; it re-exports
them under their old names.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager

import numpy as np
import torch

from .config import SampleConfig
from .data import Prepared, pad_stack
from .device import autocast
from .model import VLA
from .tokenizer import ActionTokenizer

HEAD_ROWS = 4096  # rows per slice of the bin heads and the draw: the (rows, C, D, 256) float32
#   logits and the draw's temporaries stay at a few GB, whatever the rows of a pass
GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before the capture (PyTorch's recipe)
STATIC_CUDA_ROWS = 16384  # default rows (episodes x k) of a static pass on CUDA. From ~2k rows
#   on the GPU is busy and a step's time grows with its rows; a pass's cost beyond its steps (the
#   capture waits for the GPU) hides behind the neighbouring passes. 8 x 10,000 episodes on one
#   H100: 9.9 s in passes of 32k rows, 7.7 s of 16k (one run); 8.3 s of 16k, 7.0 s of 8k (another,
#   benchmarks.policy). Peak memory ~17 GB at 16k rows (two passes alive at once)


# --- the draws, shared with the loop engine -------------------------------------------------


def episode_seed(seed: int, key: str) -> int:
    """A 63-bit seed for one episode's draws (stable across processes and machines)."""
    digest = hashlib.sha256(f"{int(seed)}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def pick_bins(logits: torch.Tensor, u: torch.Tensor, temperature: float,
              top_p: float) -> torch.Tensor:
    """Bin ids (...,) from logits (..., K) and uniforms u (...,) in [0, 1)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (..., K)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep_sorted = (sorted_p.cumsum(-1) - sorted_p) < top_p  # the top bin is always kept
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        probs = probs * keep
    cdf = probs.cumsum(-1)  # (..., K), in bin order so equal u means equal quantile
    target = u[..., None] * cdf[..., -1:]
    return (cdf <= target).sum(-1).clamp(max=probs.shape[-1] - 1)


def sampling_noise(group: Sequence[Prepared], cfg: SampleConfig, chunk: int,
                   chol: torch.Tensor, length: int) -> torch.Tensor:
    """(E * K, T, D) uniforms for inverse-CDF sampling, row = episode * K + candidate; zeros past
    an episode's end.

    Normals from each episode's own generator, correlated across dimensions through ``chol``
    (when ``couple_dims``), one draw per chunk (``noise="chunk"``) or per frame, mapped to [0, 1)
    by the normal CDF. Each episode's draws are mapped in place while they are in cache (before a
    chunk's draw is spread over its frames) and copied once into the output, whose padding alone
    is zeroed: a pass over the (E, K, T, D) output is memory-bound, the draws' arithmetic is not.
    """
    k, width = cfg.k, chol.shape[0]
    per_chunk = cfg.noise == "chunk"
    u = torch.empty(len(group), k, length, width)  # (E, K, T, D)
    for i, p in enumerate(group):
        g = torch.Generator().manual_seed(episode_seed(cfg.seed, p.key))
        n = -(-p.n_frames // chunk) if per_chunk else p.n_frames
        z = torch.randn((k, n, width), generator=g)  # (K, n, D)
        if cfg.couple_dims:
            z = z @ chol.T  # rows ~ N(0, chol chol^T)
        z.div_(2**0.5).erf_().add_(1).mul_(0.5).clamp_(0.0, 1.0 - 1e-7)  # the normal CDF
        if per_chunk:  # every frame of a chunk uses its chunk's draw
            z = z[:, :, None].expand(-1, -1, chunk, -1).flatten(1, 2)  # (K, n * C, D)
        u[i, :, : p.n_frames] = z[:, : p.n_frames]
        u[i, :, p.n_frames :] = 0.0
    return u.flatten(0, 1)


# --- the heads and the draw, fused where it can be -------------------------------------------

def use_fused_draw(model: torch.nn.Module, cfg: SampleConfig) -> bool:
    """Whether a static step draws its bins with the fused kernel: on CUDA with Triton, for
    the plain-form heads autocast runs there, and without a nucleus cut (``top_p`` 1)."""
    from . import kernels

    device = next(model.parameters()).device
    return (cfg.top_p >= 1.0 and model.fused_gaussian is not True
            and kernels.available(device))


def draw(model: VLA, x: torch.Tensor, last: dict[str, torch.Tensor], u: torch.Tensor,
         cfg: SampleConfig, fused: bool) -> torch.Tensor:
    """Bin ids (R, C, D) drawn from the heads at the single position of ``x`` (R, 1, d), the
    previous action ``last`` (R, 1, D) and uniforms ``u`` (R, C, D): ``read_heads`` then
    ``pick_bins``, or the two fused in one kernel (:mod:`policy.ml.kernels`)."""
    device = x.device
    if not fused:
        with _autocast(device):
            logits = model.read_heads(x, last, None)[:, 0]  # (R, C, D, K)
        return pick_bins(logits, u, cfg.temperature, cfg.top_p)
    from .kernels import draw_bins

    with _autocast(device):
        feats, mean, inv_var = model.head_parts(x, last, None)  # (R, 1, C, D, e), (R, 1, C, D)
    return draw_bins(feats[:, 0], mean[:, 0], inv_var[:, 0], u, model.bin_w, model.bin_b,
                     model.centers, cfg.temperature)


# --- the static engine ------------------------------------------------------------------------


def supports_static(model: torch.nn.Module) -> bool:
    """Whether ``model`` has the fixed-shape step (the small transformer; a pretrained backbone
    keeps its own cache and samples with the loop engine)."""
    return isinstance(model, VLA)


def _check_static(model: torch.nn.Module) -> None:
    if not supports_static(model):
        raise ValueError(f"the static sampling engine runs the small transformer (VLA), not "
                         f"{type(model).__name__}: sample it with engine='loop'")


def _autocast(device: torch.device) -> AbstractContextManager:
    """The sampler's autocast (bf16 on CUDA). Its cache of cast weights is off on CUDA: a graph
    must cast inside itself, not reuse casts made, and freed, outside the capture."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16, cache_enabled=False)
    return autocast(device, True)


def _host_inputs(group: Sequence[Prepared], cfg: SampleConfig, chunk: int,
                 chol: torch.Tensor) -> dict[str, torch.Tensor | None]:
    """A pass's inputs in host memory: the speaker side per episode, padded to a whole number of
    chunks, (E, P, ...), the presence masks (B,) and the uniforms (B, P, D). Host work only (the
    noise coupling ``chol`` is a CPU copy), so it may run on another thread while the GPU samples
    the previous pass -- or captures its graph, which any CUDA call from another thread would
    break."""
    k = cfg.k
    padded = -(-max(p.n_frames for p in group) // chunk) * chunk  # the last whole chunk fits
    host: dict[str, torch.Tensor | None] = {}
    for name in ("speaker", "mel", "text", "video"):
        x, present = pad_stack([getattr(p, name) for p in group], padded)
        host[name] = x
        if name in ("mel", "video"):
            host[f"{name}_mask"] = present.repeat_interleave(k)  # (B,)
    host["u"] = sampling_noise(group, cfg, chunk, chol, padded)
    return host


class _StaticPass:
    """One pass of the static engine: inputs, uniforms, ring cache and outputs, on the device."""

    def __init__(self, model: VLA, tok: ActionTokenizer, group: Sequence[Prepared],
                 cfg: SampleConfig, host: dict[str, torch.Tensor | None]) -> None:
        self.model, self.cfg = model, cfg
        self.device = device = next(model.parameters()).device
        k, chunk, width = cfg.k, model.cfg.chunk, tok.width
        self.chunk = chunk
        self.fused = use_fused_draw(model, cfg)  # the heads and the draw in one kernel
        self.length = max(p.n_frames for p in group)
        self.rows = b = len(group) * k
        # Speaker-side inputs per episode (E, P, ...), read per step for the K rows of each.
        # Copies that need not wait for the GPU (``sample_passes_static`` makes a pass on a side
        # stream while the previous one samples).
        self.inputs = {name: x.to(device, non_blocking=True)
                       for name in ("speaker", "mel", "text", "video")
                       if (x := host[name]) is not None}
        self.masks = {name: host[name].to(device, non_blocking=True)
                      for name in ("mel_mask", "video_mask")}
        self.u = host["u"].to(device, non_blocking=True)  # (B, P, D)
        padded = self.u.shape[1]
        self.episode = (torch.arange(b, device=device) // k)[:, None]  # (B, 1) episode of a row
        self.ids = torch.zeros(b, padded, width, dtype=torch.int32, device=device)  # tokens
        self.actions = torch.zeros(b, padded, width, device=device)  # decoded, [-1, 1] units
        self.ring = model.new_ring(device)
        self.counter = torch.zeros((), dtype=torch.long, device=device)  # last frame fed
        self.offsets = torch.arange(chunk, device=device)  # (C,)
        # The tokenizer with its edges on the device: decode and normalise, its own arithmetic,
        # then run inside a graph (a copy from host memory may not).
        self.tok = copy.copy(tok)
        self.tok.edges = tok.edges.to(device)

    def step(self, pos: torch.Tensor, keys: int | None) -> None:
        """Feed the frames ``pos`` (T,), read the heads at the last, draw the chunk from there
        on and write its ids and its decoded actions (the next steps' ``prev``)."""
        b, cfg = self.rows, self.cfg
        batch: dict[str, torch.Tensor | None] = {
            name: x[self.episode, pos[None, :]] for name, x in self.inputs.items()}  # (B, T, ...)
        batch.update(self.masks)
        batch["prev"] = self.actions[:, (pos - 1).clamp(min=0)]  # (B, T, D)
        batch["prev_valid"] = (pos >= 1)[None, :].expand(b, -1)  # (B, T)
        with _autocast(self.device):
            x = self.model.forward_static(batch, pos, self.ring, keys)  # (B, 1, d)
        last = {"prev": batch["prev"][:, -1:], "prev_valid": batch["prev_valid"][:, -1:]}
        frames = pos[-1] + self.offsets  # (C,) the frames drawn now
        u = self.u[:, frames]  # (B, C, D)
        span = b if self.fused else HEAD_ROWS  # fused, there are no logits to bound
        for r in range(0, b, span):
            rows = slice(r, r + span)
            new = draw(self.model, x[rows], {name: v[rows] for name, v in last.items()},
                       u[rows], cfg, self.fused)  # (R, C, D)
            self.ids[rows].index_copy_(1, frames, new.to(self.ids.dtype))
            actions = self.tok.normalise(self.tok.decode(new))  # (R, C, D)
            self.actions[rows].index_copy_(1, frames, actions)

    def steady_step(self, keys: int | None) -> None:
        """The step whose last frame is the counter: frames counter - chunk + 1 .. counter."""
        self.step(self.counter - (self.chunk - 1) + self.offsets, keys)

    def run(self, graph: bool, exact: bool) -> None:
        starts = range(self.chunk, self.length, self.chunk)
        self.step(torch.zeros(1, dtype=torch.long, device=self.device), 1 if exact else None)
        if graph and len(starts):
            replay = self._capture(starts[0])
            for start in starts:
                self.counter.fill_(start)
                replay.replay()
            return
        for start in starts:
            self.counter.fill_(start)
            # Exact: as many keys as the loop's cache holds (all positions until the ring fills).
            self.steady_step(min(start + 1, self.ring.size) if exact else None)

    def _capture(self, start: int) -> torch.cuda.CUDAGraph:
        """One steady step in a CUDA graph. The warm-up runs the step of ``start`` itself, which
        writes only what it reads after writing (its keys, its chunk), so repeating it before
        the replays changes nothing."""
        self.counter.fill_(start)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP_STEPS):
                self.steady_step(None)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.steady_step(None)
        return graph

    def values(self, group: Sequence[Prepared]) -> list[np.ndarray]:
        """The candidates (K, T_i, D) of each episode. Decoded where the ids are: separate
        elementwise kernels round alike on every device, and the copy back is no larger."""
        k, width = self.cfg.k, self.tok.width
        values = self.tok.decode(self.ids[:, : self.length]).cpu()  # (B, T, D)
        values = values.view(len(group), k, self.length, width).numpy()
        return [values[i, :, : p.n_frames].copy() for i, p in enumerate(group)]


@torch.no_grad()
def sample_group_static(model: VLA, tok: ActionTokenizer, group: Sequence[Prepared],
                        cfg: SampleConfig, *, graph: bool | None = None,
                        exact: bool | None = None,
                        host: dict[str, torch.Tensor | None] | None = None,
                        ) -> list[np.ndarray]:
    """``cfg.k`` candidates for each episode of one pass, ``(K, T_i, D)`` float32 each: the
    contract and the draws of :func:`policy.ml.sample._sample_group`, with fixed shapes.

    ``graph`` replays the steady step from a CUDA graph (default: on CUDA); ``exact`` reads the
    ring in position order, only the positions the loop engine's cache holds (default: on the
    CPU, where it makes the candidates the loop engine's bit for bit; it varies the number of
    keys while the window fills, so it cannot be graphed). ``host``: the pass's inputs, built
    ahead by :func:`_host_inputs`. The model must be in eval mode.
    """
    device = next(model.parameters()).device
    exact = device.type != "cuda" if exact is None else exact
    graph = device.type == "cuda" and not exact if graph is None else graph
    if graph and (exact or device.type != "cuda"):
        raise ValueError("a CUDA graph needs a CUDA model and the ring read as it lies "
                         "(exact=False)")
    _check_static(model)
    if host is None:
        host = _host_inputs(group, cfg, model.cfg.chunk, model.noise_chol.cpu())
    state = _StaticPass(model, tok, group, cfg, host)
    state.run(graph, exact)
    return state.values(group)


def sample_passes_static(model: VLA, tok: ActionTokenizer, groups: Sequence[Sequence[Prepared]],
                         cfg: SampleConfig) -> Iterator[list[np.ndarray]]:
    """:func:`sample_group_static` for each pass, in order. On CUDA a worker thread builds the
    next pass's host inputs (padding, uniforms) while the GPU samples this one; on the CPU the
    passes simply run in turn."""
    if next(model.parameters()).device.type != "cuda" or len(groups) < 2:
        for group in groups:
            yield sample_group_static(model, tok, group, cfg)
        return
    chunk, chol = model.cfg.chunk, model.noise_chol.cpu()
    device = next(model.parameters()).device
    _check_static(model)
    main, side = torch.cuda.current_stream(device), torch.cuda.Stream(device)
    finished: tuple | None = None  # the pass whose candidates are still on the GPU
    with ThreadPoolExecutor(1) as pool:
        upcoming = pool.submit(_host_inputs, groups[0], cfg, chunk, chol)
        for i, group in enumerate(groups):
            host = upcoming.result()
            if i + 1 < len(groups):
                upcoming = pool.submit(_host_inputs, groups[i + 1], cfg, chunk, chol)
            with torch.cuda.stream(side):  # inputs in while the previous pass still samples
                state = _StaticPass(model, tok, group, cfg, host)
            main.wait_stream(side)
            state.run(graph=True, exact=False)
            done = torch.cuda.Event()
            done.record(main)
            if finished is not None:  # the previous pass's candidates out, meanwhile
                yield _fetch(*finished, side)
            finished = (state, group, done)
        if finished is not None:
            yield _fetch(*finished, side)


def _fetch(state: _StaticPass, group: Sequence[Prepared], done: torch.cuda.Event,
           side: torch.cuda.Stream) -> list[np.ndarray]:
    """A pass's candidates, decoded and copied on the side stream once the pass is ``done``:
    the next pass samples on the main stream meanwhile. (The pass's buffers are freed only
    after this returns, so the main stream never reuses memory the side stream still reads.)"""
    side.wait_event(done)
    with torch.cuda.stream(side):
        return state.values(group)
