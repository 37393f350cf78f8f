"""Memory accounting of a training cell: what a step needs, per phase peaks, and the longest context that fits.

Four kinds of figure, kept apart because they answer different questions:
- analytic (`memory_decomposition`): bytes of weights, gradients and optimizer state, from shapes and dtypes;
- counted (`SavedActivationCounter`, `measure_activations`): bytes the autograd graph keeps for backward after
  one forward; tensor sizes, not allocator behaviour, so identical on any device running the same kernels;
- measured (`PhaseMeter`, `process_peak`): what the device allocator (CUDA) or the OS (CPU RSS) saw;
- predicted: the max context length under a memory budget lives in `ssmlora.lab.frontier`.

All MiB figures are 2**20 bytes. Depends on torch, psutil and ctypes only (no Lightning).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import math
import re
from pathlib import Path
from typing import Callable, Iterable

import psutil
import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef

MiB = 2**20

# ---------------------------------------------------------------------------------------------- sizes

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b|i)?|(b))?\s*$", re.IGNORECASE)
_SIZE_FORMS = ("accepted forms: a positive number of bytes ('1073741824') or a number with a binary unit: "
               "B, K/KB/KiB/Ki, M/MB/MiB/Mi, G/GB/GiB/Gi, T/TB/TiB/Ti, any case, optional space "
               "('8GB', '8 GiB', '512M', '8g')")


def parse_size(text: str | int) -> int:
    """Bytes in a memory size such as "8GB", "8 GiB", "8192MiB", "8g", "512M", "1.5G" or "1073741824".

    Every unit is binary: K/KB/KiB = 2**10, M/MB/MiB = 2**20, G/GB/GiB = 2**30, T/TB/TiB = 2**40. This is the
    JEDEC convention for memory sizes and what `--mem=8G` (Slurm), `-Xmx8g` and nvidia-smi's MiB readings mean;
    a decimal (SI) budget can be given in plain bytes ("8000000000"). Plain bytes must be a whole number.
    Raises ValueError for anything else, for zero and for negatives.
    """
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    match = _SIZE_RE.match(text) if isinstance(text, str) else None
    if match is None or (not (match.group(2) or match.group(3)) and "." in match.group(1)):
        raise ValueError(f"cannot read memory size {text!r} (a positive size is needed); {_SIZE_FORMS}")
    number, unit = float(match.group(1)), (match.group(2) or match.group(3) or "").lower()
    size = int(number * _UNITS[unit]) if "." in match.group(1) else int(match.group(1)) * _UNITS[unit]
    if size <= 0:
        raise ValueError(f"memory size {text!r} must be at least one byte; {_SIZE_FORMS}")
    return size


# ------------------------------------------------------------------------------- counted activations

class SavedActivationCounter:
    """Counts the bytes autograd saves for backward while the context is open (typically one forward).

    Each saved tensor counts by its whole storage, once: repeated saves of a storage or of views of it (q/k/v
    slices of one projection, `hidden[:, 0]`) count once, and a view holds its whole storage alive. Storages
    of `model`'s parameters and buffers, and their views (the `weight.t()` a linear saves), are excluded:
    `memory_decomposition` counts weights. Without a model only `nn.Parameter` objects are excluded.
    Included: dropout masks, the ids an embedding saves, and autocast's low-precision weight copies that
    matmuls save (per step, constant in length and batch; also alone as `.weight_copy_bytes`: saved tensors
    equal to a cast of a parameter matrix of `model`). Excluded: temporaries freed within the forward, the
    backward's gradients and transients, allocator caching. So: the graph's size at the end of the forward,
    not the step's peak. Kernels matter (CPU flash vs CUDA SDPA keep different softmax statistics), devices not.

    Gradient checkpointing, non-reentrant (`use_reentrant=False`): torch pushes its own saved-tensor hooks
    inside each checkpointed layer and the innermost hooks win, so what such a layer saves is not counted
    (rightly: it is recomputed). Also unseen: the layer inputs the checkpoint holds for recomputation (one
    hidden state per layer) and a recomputed layer's working set in backward: a lower bound then. The
    reentrant path saves its inputs through `save_for_backward`, which is counted.

    `.bytes` (distinct storages saved while open), `.by_dtype` (same, per dtype name), `.tensors` (how many),
    `.weight_copy_bytes` (part of `.bytes`), `.live_bytes` (of those, still alive now).
    """

    def __init__(self, model: nn.Module | None = None) -> None:
        self.model = model
        self.bytes = self.tensors = self.weight_copy_bytes = 0
        self.by_dtype: dict[str, int] = {}
        self._seen: dict[StorageWeakRef, int] = {}
        self._excluded: set[StorageWeakRef] = set()
        self._params_by_shape: dict[tuple, list[torch.Tensor]] = {}
        self._hooks: contextlib.AbstractContextManager | None = None

    def __enter__(self) -> "SavedActivationCounter":
        if self.model is not None:
            self._excluded = {StorageWeakRef(t.untyped_storage())
                              for t in [*self.model.parameters(), *self.model.buffers()]}
            for p in self.model.parameters():  # matrices only: autocast casts matmul weights, and a zero
                if p.dim() >= 2:               # bias would match any zero tensor of its length
                    self._params_by_shape.setdefault(tuple(p.shape), []).append(p)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self._excluded, self._params_by_shape = set(), {}

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if self.model is None and isinstance(t, nn.Parameter):
            return t
        try:
            # Weak refs compare by storage object, so a freed storage's address reused later is a new key.
            key, nbytes = StorageWeakRef(t.untyped_storage()), t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError, TypeError):  # storage-less tensor subclasses
            return t
        if key in self._excluded or key in self._seen or nbytes == 0:
            return t
        self._seen[key] = nbytes
        self.bytes += nbytes
        self.tensors += 1
        name = str(t.dtype).removeprefix("torch.")
        self.by_dtype[name] = self.by_dtype.get(name, 0) + nbytes
        if t.is_floating_point() and self._is_weight_copy(t, nbytes):
            self.weight_copy_bytes += nbytes
        return t

    def _is_weight_copy(self, t: torch.Tensor, nbytes: int) -> bool:
        # A linear saves weight.t() of the autocast copy, so a copy shows up transposed as often as not.
        for view in (t, t.mT) if t.dim() == 2 else (t,):
            for p in self._params_by_shape.get(tuple(view.shape), ()):
                if (p.dtype != t.dtype and p.numel() * t.element_size() == nbytes
                        and torch.equal(view, p.detach().to(t.dtype))):
                    return True
        return False

    @property
    def live_bytes(self) -> int:
        return sum(n for ref, n in self._seen.items() if not ref.expired())


# ---------------------------------------------------------------------------------- analytic state

_OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd": 0, "sgd_momentum": 1, "none": 0}


def memory_decomposition(model: nn.Module, optimizer_kind: str = "adamw") -> dict:
    """Fixed (length-independent) memory of training `model`, in MiB, from parameter shapes and dtypes.

    - `weights_frozen_mb` / `weights_trainable_mb`: parameters with requires_grad False / True, each shared
      (tied) parameter once, in their stored dtype (fp32 under Lightning's bf16-mixed: autocast copies are
      activations, see `SavedActivationCounter`);
    - `buffers_mb`: registered buffers (position ids, running statistics ...);
    - `grads_mb`: one gradient per trainable parameter, in the parameter's dtype;
    - `optimizer_mb`: "adamw"/"adam": exp_avg + exp_avg_sq per trainable parameter (parameter dtype) plus a
      float32 step scalar per tensor (on the CPU unless capturable/fused); "sgd_momentum": one buffer; "sgd",
      "none": nothing;
    - `fixed_mb`: their sum. Excludes activations, the CUDA context and allocator cache, the Python runtime.
    Works on a meta-device model (nothing allocated).
    """
    if optimizer_kind not in _OPTIMIZER_STATES:
        raise ValueError(f"unknown optimizer_kind {optimizer_kind!r}: choose one of {', '.join(_OPTIMIZER_STATES)}")
    params = list(model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in params if not p.requires_grad)
    n_tensors, n_trainable = sum(p.requires_grad for p in params), sum(p.numel() for p in params if p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    steps = 4 * n_tensors if optimizer_kind.startswith("adam") else 0
    optimizer = _OPTIMIZER_STATES[optimizer_kind] * trainable + steps
    parts = {"weights_frozen_mb": frozen, "weights_trainable_mb": trainable, "buffers_mb": buffers,
             "grads_mb": trainable, "optimizer_mb": optimizer}
    result = {k: v / MiB for k, v in parts.items()}
    result["fixed_mb"] = sum(parts.values()) / MiB
    result["trainable_params"] = n_trainable
    return result


def measure_activations(model: nn.Module, batch: dict, autocast_dtype: torch.dtype | None = None) -> dict:
    """Run one forward (`model(**batch)`) and backward, counting what the forward saved for backward.

    Returns MiB: `activations_mb` (the `SavedActivationCounter` figure for this micro-batch: excludes
    weights, buffers, gradients, optimizer state and backward transients), `weight_copies_mb` (the part of it
    that is autocast copies of weights: per step, independent of length and batch size), and
    `activations_mb_per_seq` = (activations_mb - weight_copies_mb) / batch size, the part that scales with
    the sequences; also `activations_by_dtype_mb`, `batch_size`, `seq_len`. The loss is `output.loss` (pass
    labels) or else the sum of the logits. `autocast_dtype` (e.g. torch.bfloat16) runs the forward under
    autocast, as Lightning's bf16-mixed does. Gradients are set to None afterwards (earlier ones too).
    """
    first = next(iter(batch.values()))
    with SavedActivationCounter(model) as counter:
        with torch.autocast(first.device.type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            out = model(**batch)
    # Without labels any scalar reaching every logit drives the same backward graph.
    loss = out.loss if getattr(out, "loss", None) is not None else getattr(out, "logits", out).float().sum()
    loss.backward()
    model.zero_grad(set_to_none=True)
    size = int(first.shape[0])
    return {"activations_mb": counter.bytes / MiB, "weight_copies_mb": counter.weight_copy_bytes / MiB,
            "activations_mb_per_seq": (counter.bytes - counter.weight_copy_bytes) / MiB / size,
            "activations_by_dtype_mb": {k: v / MiB for k, v in counter.by_dtype.items()},
            "batch_size": size, "seq_len": int(first.shape[1]) if first.dim() > 1 else 1}


def synthetic_batch(model: nn.Module, length: int, batch_size: int = 1, device: str | torch.device = "cpu",
                    seed: int = 0, pad_tail: float = 0.0) -> dict:
    """A batch for `model`: random ids (never 0, the usual pad id), labels, and a mask whose last `pad_tail`
    fraction of positions is 0. Padding matters: transformers drops an all-ones mask under SDPA, but any
    padding builds a (B, 1, L, L) mask, which SDPA turns into a float bias that every layer saves a copy of.
    """
    g = torch.Generator().manual_seed(seed)
    vocab = int(getattr(model.config, "vocab_size", 1000))
    ids = torch.randint(1, vocab, (batch_size, length), generator=g)
    regression = getattr(model.config, "num_labels", 2) == 1
    labels = torch.zeros(batch_size, dtype=torch.float32 if regression else torch.long)
    mask = torch.ones_like(ids)
    mask[:, length - int(length * pad_tail):] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return {k: v.to(device) for k, v in batch.items()}


def activation_scaling(model_factory: Callable[[int], nn.Module], lengths: Iterable[int],
                       autocast_dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                       batch_size: int = 1, records: list | None = None,
                       pad_tail: float = 0.0) -> list[tuple[int, float]]:
    """[(L, activations_mb_per_seq)] from one training forward+backward per length, micro-batch `batch_size`.

    `model_factory(L)` builds a model taking L tokens (e.g. `lambda L: load_backbone(name, 2, L)[0]` with
    adapters injected); it runs in train mode on `device` and is dropped after its step. Per sequence excludes
    autocast weight copies (see `measure_activations`); `records` receives each length's full figures.
    `pad_tail`: see `synthetic_batch` (0: full-length sequences, the linear best case under SDPA).
    """
    points = []
    for length in lengths:
        model = model_factory(length).to(device).train()
        batch = synthetic_batch(model, length, batch_size, device, pad_tail=pad_tail)
        figures = measure_activations(model, batch, autocast_dtype)
        points.append((int(length), figures["activations_mb_per_seq"]))
        if records is not None:
            records.append(figures)
        del model
        gc.collect()
    return points


def fit_power_law(lengths: Iterable[float], values: Iterable[float]) -> tuple[float, float]:
    """(c, b) of values = c * L**b, least squares in log-log. Needs two distinct positive lengths."""
    xs, ys = [math.log(x) for x in lengths], [math.log(y) for y in values]
    if len(xs) != len(ys) or len(set(xs)) < 2:
        raise ValueError("a power-law fit needs at least two distinct lengths, one value each")
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return math.exp(my - b * mx), b


def fit_exponent(lengths: Iterable[float], values: Iterable[float]) -> float:
    """Slope of log(values) against log(lengths), least squares: ~1 linear memory, ~2 quadratic."""
    return fit_power_law(lengths, values)[1]


# -------------------------------------------------------------------------------- measured phases

try:
    _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
except OSError:  # no C library by that name (Windows, some sandboxes): the allocator calls become no-ops
    _LIBC = None
_M_MMAP_THRESHOLD = -3


MMAP_THRESHOLD = 64 * 1024


def configure_allocator_for_measurement(mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Make glibc mmap every allocation >= `mmap_threshold` bytes, so a freed tensor leaves RSS at once.

    By default glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which
    tensors below it come from heaps that keep freed memory; an RSS reading then depends on what ran before.
    A fixed threshold stops that. Same effect as starting the process with `MALLOC_MMAP_THRESHOLD_=65536`
    (the environment is only read at start-up; this call works any time, best before the large allocations).
    Why 64 KiB: tensors under the threshold share glibc's heap with the step's transients, and the heap's holes
    count in RSS. SSMLoRA's rank-8 per-token tensors are 128 KiB at 4096 tokens, so at a higher threshold its
    training figure holds holes that LoRA's does not (docs/sweep.md, "How a cell is measured"). The price: the
    CPU flash-attention kernels' block buffers (just under 512 KiB) become a fresh mmap each, so a step is
    slower; a cell therefore sets it only in its memory pass, a forked child (ssmlora.lab.cell_memory).
    `ssmlora.lab.frontier.FRONTIER_MMAP_THRESHOLD` takes the other side of the trade. Returns False where glibc
    is absent (musl, macOS, Windows): harmless.
    """
    mallopt = getattr(_LIBC, "mallopt", None)
    return bool(mallopt and mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1)


def release_freed_memory() -> bool:
    """Collect Python garbage and hand glibc's free heap pages back to the OS (`malloc_trim(0)`)."""
    gc.collect()
    trim = getattr(_LIBC, "malloc_trim", None)
    return bool(trim and trim(0))


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


# Resetting VmHWM (and CUDA's peak stats) per phase destroys the process peak, so it is folded in here first.
_PROCESS_PEAK = {"rss": 0, "cuda_allocated": {}, "cuda_reserved": {}}


def _fold_process_peak(device: torch.device | None = None) -> None:
    _PROCESS_PEAK["rss"] = max(_PROCESS_PEAK["rss"], (_status_kb("VmHWM") or 0) * 1024,
                               psutil.Process().memory_info().rss)
    if device is not None and device.type == "cuda":
        i = device.index if device.index is not None else torch.cuda.current_device()
        for key, fn in (("cuda_allocated", torch.cuda.max_memory_allocated),
                        ("cuda_reserved", torch.cuda.max_memory_reserved)):
            _PROCESS_PEAK[key][i] = max(_PROCESS_PEAK[key].get(i, 0), fn(i))


def reset_host_peak() -> bool:
    """Reset the RSS high-water mark (Linux: "5" to /proc/self/clear_refs), keeping the process peak."""
    _fold_process_peak()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def process_peak(device: str | torch.device | None = None) -> dict:
    """Whole-process peaks since start, in MiB, surviving the per-phase resets of this module.

    `process_peak_rss_mb`: peak resident set of the process (runtime, libraries, data, model, everything).
    On CUDA also `process_peak_cuda_allocated_mb` / `process_peak_cuda_reserved_mb` for `device`. Resets done
    outside this module (e.g. `profilers.reset_cpu_peak`) lose what came before them.
    """
    device = torch.device(device) if device is not None else None
    _fold_process_peak(device)
    out = {"process_peak_rss_mb": _PROCESS_PEAK["rss"] / MiB}
    if device is not None and device.type == "cuda":
        i = device.index if device.index is not None else torch.cuda.current_device()
        out["process_peak_cuda_allocated_mb"] = _PROCESS_PEAK["cuda_allocated"][i] / MiB
        out["process_peak_cuda_reserved_mb"] = _PROCESS_PEAK["cuda_reserved"][i] / MiB
    return out


class PhaseMeter:
    """Peak memory of one phase ("data", "probe", "train", "eval" ...): `with PhaseMeter("train", dev) as m:`.

    At entry Python garbage is collected and glibc's free pages trimmed (so an earlier phase's freed memory
    neither inflates nor hides this one), then the peak is reset. `m.result` (merged into `into` too) in MiB:
    - CUDA: `{phase}_peak_mb` = max_memory_allocated during the phase (live tensors only, incl. everything
      alive at entry: weights, optimizer state), `{phase}_rise_mb` = that minus the allocation at entry,
      `{phase}_reserved_peak_mb` = max_memory_reserved (includes blocks cached by earlier phases unless
      `empty_cache=True`), `{phase}_start_mb`;
    - CPU: `{phase}_peak_mb` = the process's peak RSS during the phase (VmHWM after a reset at entry),
      `{phase}_rise_mb` = that minus the RSS at entry: what the phase itself added at its worst moment,
      `{phase}_start_mb`. RSS follows freed tensors only with `configure_allocator_for_measurement()` (or
      `MALLOC_MMAP_THRESHOLD_`) in effect. The first phase to use a kernel library (oneDNN, OpenMP pools)
      also carries its one-off buffers.
    `{phase}_mem_basis`: "cuda_allocated", "cpu_rss", or "cpu_rss_now" where the peak could not be reset
    (no /proc): then the peak is the RSS at exit, a lower bound.
    Phases must not nest: an inner phase's reset would erase the outer one's peak so far.
    """

    def __init__(self, phase: str, device: str | torch.device | None = None, into: dict | None = None,
                 empty_cache: bool = False) -> None:
        self.phase, self.into, self.empty_cache = phase, into, empty_cache
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.result: dict = {}
        self._start = 0
        self._reset = False

    def __enter__(self) -> "PhaseMeter":
        release_freed_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            _fold_process_peak(self.device)
            if self.empty_cache:
                torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._reset = reset_host_peak()
            self._start = psutil.Process().memory_info().rss
        return self

    def __exit__(self, *exc) -> None:
        p = self.phase
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak, basis = torch.cuda.max_memory_allocated(self.device), "cuda_allocated"
            self.result[f"{p}_reserved_peak_mb"] = torch.cuda.max_memory_reserved(self.device) / MiB
        else:
            hwm = _status_kb("VmHWM") if self._reset else None
            if hwm is not None:
                peak, basis = hwm * 1024, "cpu_rss"
            else:
                peak, basis = psutil.Process().memory_info().rss, "cpu_rss_now"
        self.result.update({f"{p}_peak_mb": peak / MiB, f"{p}_rise_mb": max(peak - self._start, 0) / MiB,
                            f"{p}_start_mb": self._start / MiB, f"{p}_mem_basis": basis})
        if self.into is not None:
            self.into.update(self.result)
