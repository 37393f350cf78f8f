"""Cost measurements of a cell, as Lightning callbacks: throughput, FLOPs and MFU (memory: ssmlora.lab.memory).

What the numbers include:
- `ThroughputCallback`: wall time per optimizer step (CUDA synchronised before each timestamp), the first
  `warmup_steps` steps excluded; real (attention-mask) tokens, padded tokens and sequences per second.
- FLOPs of one optimizer step come from `torch.utils.flop_counter.FlopCounterMode` over one micro-batch
  forward+backward (during a warm-up step, so its overhead is never timed) times the micro-batches per step.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

# torch's counter knows the CUDA SDPA kernels but not the CPU flash kernel, which dominates at long lengths.
# FlopCounterMode hands these the argument shapes: (q, k, v, ...) forward, (grad_out, q, k, v, ...) backward.
_CPU_SDPA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *_, out_shape=None, **__: sdpa_flop_count(q, k, v),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda g, q, k, v, *_, out_shape=None, **__: sdpa_backward_flop_count(g, q, k, v),
}


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, taught the CPU attention kernels."""
    return FlopCounterMode(display=False, custom_mapping=_CPU_SDPA_FLOPS)


# Dense bf16 peak per GPU for MFU where Lightning's table lacks the device (FLOP/s).
_EXTRA_PEAK_FLOPS = {"h200": 989e12, "h100": 989e12, "a100": 312e12}


def peak_flops(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> float | None:
    """Peak FLOP/s of a CUDA device for `dtype` (Lightning's table, then ours); None on CPUs/unknown GPUs."""
    if device.type != "cuda":
        return None
    try:
        from lightning.fabric.utilities.throughput import get_available_flops

        flops = get_available_flops(device, dtype)
        if flops:
            return float(flops)
    except Exception:  # noqa: BLE001 - an unknown device just means "no MFU"
        pass
    name = torch.cuda.get_device_name(device).lower()
    return next((v for k, v in _EXTRA_PEAK_FLOPS.items() if k in name), None)


def _vm_hwm_mb() -> float | None:
    """This process's peak RSS (VmHWM) in MiB, from /proc; None where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def reset_cpu_peak() -> bool:
    """Reset the process's RSS high-water mark (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def count_tokens(batch: dict) -> tuple[int, int, int]:
    """(real tokens, padded tokens, sequences) of a batch; padded counts every position fed to the model."""
    mask = batch["attention_mask"]
    return int(mask.sum()), int(mask.numel()), int(mask.shape[0])


class ThroughputCallback(L.Callback):
    """Times optimizer steps and counts tokens; `summary()` gives the per-cell figures.

    Per-device figures are multiplied by the world size for the all-device rates (every rank runs the same
    number of equal-token-budget steps), and `flops_per_step` likewise covers all devices.
    """

    def __init__(self, warmup_steps: int = 1, count_flops: bool = True) -> None:
        self.warmup_steps, self.count_flops = warmup_steps, count_flops
        self.step_times: list[float] = []
        self.tokens = {"real": 0, "padded": 0, "samples": 0}
        self.flops_per_micro_batch: float | None = None
        self._step_start: float | None = None
        self._pending = {"real": 0, "padded": 0, "samples": 0}
        self._flop_mode: FlopCounterMode | None = None
        self._accumulate = 1
        self._world = 1
        self._device = torch.device("cpu")

    def _sync(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._accumulate = trainer.accumulate_grad_batches
        self._world = trainer.world_size
        self._device = pl_module.device

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx % self._accumulate == 0:  # first micro-batch of an optimizer step
            self._sync()
            self._step_start = time.perf_counter()
            self._pending = {"real": 0, "padded": 0, "samples": 0}
        real, padded, samples = count_tokens(batch)
        for k, v in zip(("real", "padded", "samples"), (real, padded, samples)):
            self._pending[k] += v
        if self.count_flops and self.flops_per_micro_batch is None and trainer.global_step < self.warmup_steps:
            self._flop_mode = flop_counter()
            self._flop_mode.__enter__()

    def on_after_backward(self, trainer, pl_module) -> None:
        # Not on_before_zero_grad: Lightning zeroes grads between forward and backward inside its closure.
        self._close_flop_counter()

    def _close_flop_counter(self) -> None:
        if self._flop_mode is not None:
            self._flop_mode.__exit__(None, None, None)
            self.flops_per_micro_batch = float(self._flop_mode.get_total_flops())
            self._flop_mode = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % self._accumulate != 0 or self._step_start is None:
            return
        self._sync()
        elapsed = time.perf_counter() - self._step_start
        for logger in trainer.loggers:  # after the clock stopped: logging is never timed
            logger.log_metrics({"step_time_s": elapsed}, step=trainer.global_step)
        # trainer.global_step already counts this step here; steps 1..warmup_steps are warm-up.
        if trainer.global_step > self.warmup_steps:
            self.step_times.append(elapsed)
            for k in self.tokens:
                self.tokens[k] += self._pending[k]

    def local_figures(self) -> dict:
        """This rank's own counts and rates (what `summary(ranks=...)` combines over ranks)."""
        total_time = sum(self.step_times)
        return {"timed_s": total_time, "step_time_s": statistics.median(self.step_times) if self.step_times else None,
                **{f"{k}_tokens" if k != "samples" else k: v for k, v in self.tokens.items()},
                "real_tokens_per_s": self.tokens["real"] / total_time if total_time > 0 else None}

    def summary(self, flops_dtype: torch.dtype = torch.bfloat16, ranks: list[dict] | None = None) -> dict:
        """Figures over all devices; empty rates when every step was warm-up.

        `ranks`: every rank's `local_figures()` (gathered under DDP): the rates are then the sum of the ranks'
        own rates and the step time the slowest rank's median. Without it, this rank's rates times the world
        size (every rank runs the same number of equal-token-budget steps).
        """
        total_time = sum(self.step_times)
        rate = (lambda n: n * self._world / total_time) if total_time > 0 else (lambda n: None)
        step_time = statistics.median(self.step_times) if self.step_times else None
        if ranks:
            key = {"real": "real_tokens", "padded": "padded_tokens", "samples": "samples"}
            ok = all(r["timed_s"] > 0 for r in ranks)
            summed = {k: (sum(r[key[k]] / r["timed_s"] for r in ranks) if ok else None) for k in key}
            step_time = max((r["step_time_s"] for r in ranks if r["step_time_s"]), default=None)
        flops = None if self.flops_per_micro_batch is None else self.flops_per_micro_batch * self._accumulate * self._world
        peak = peak_flops(self._device, flops_dtype)
        mfu = flops / step_time / (peak * self._world) if (flops and step_time and peak) else None
        if ranks:
            rates = {f"{k}_tokens_per_s" if k != "samples" else "samples_per_s": v for k, v in summed.items()}
        else:
            rates = {"real_tokens_per_s": rate(self.tokens["real"]), "padded_tokens_per_s": rate(self.tokens["padded"]),
                     "samples_per_s": rate(self.tokens["samples"])}
        return {
            **rates,
            "step_time_s": step_time,
            "timed_steps": len(self.step_times),
            "flops_per_step": flops,
            "mfu": mfu,
        }
