"""How a backbone's saved activations grow with the context length L (one training step per L, micro-batch 1).

Counts what the forward saves for backward (`ssmlora.lab.memory.SavedActivationCounter`: tensor sizes, so any
device gives the same figure for the same kernels), prints MiB per sequence per L and the fitted exponent b of
per-sequence activations = c * L**b: ~1 for SDPA/flash attention, ~2 for eager attention (it keeps the L x L
probabilities). Autocast's bf16 weight copies are shown apart: they are per step, not per sequence.

    python benchmarks/activation_scaling.py                                  # MiniLM, LoRA, sdpa, bf16 autocast
    python benchmarks/activation_scaling.py --attn eager --lengths 512 1024 2048
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from ssmlora import AdapterConfig, inject_adapters
from ssmlora.lab.backbone import DEFAULT_MODEL, load_backbone
from ssmlora.lab.memory import activation_scaling, fit_power_law, memory_decomposition


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--method", default="lora", choices=["lora", "ssmlora", "frozen"])
    parser.add_argument("--precision", default="bf16", choices=["bf16", "32"])
    parser.add_argument("--pad-tail", type=float, default=0.0, help="fraction of each sequence masked off at its end")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    def build(length: int):
        torch.manual_seed(0)
        model, _ = load_backbone(args.model, num_labels=2, reach=length, attn_implementation=args.attn)
        return inject_adapters(model, AdapterConfig(method=args.method))

    autocast = torch.bfloat16 if args.precision == "bf16" else None
    start = time.perf_counter()
    records: list[dict] = []
    points = activation_scaling(build, args.lengths, autocast_dtype=autocast, records=records,
                                pad_tail=args.pad_tail)
    fixed = memory_decomposition(build(args.lengths[0]))
    print(f"{args.model}, {args.method}, {args.attn}, {'bf16 autocast' if autocast else 'fp32'}, batch 1, "
          f"pad tail {args.pad_tail:g} "
          f"({time.perf_counter() - start:.0f} s); weights, grads, AdamW state: {fixed['fixed_mb']:.1f} MiB")
    print("\n| L | saved MiB | of which weight copies | per sequence MiB | KiB per token |\n|---|---|---|---|---|")
    for (length, mb), rec in zip(points, records):
        print(f"| {length} | {rec['activations_mb']:.1f} | {rec['weight_copies_mb']:.1f} | {mb:.1f} | "
              f"{mb * 1024 / length:.1f} |")
    c, b = fit_power_law(*zip(*points))
    print(f"\nexponent b = {b:.3f} (activations ~ {c:.4g} MiB * L**b)")
    if len(points) > 2:
        pairs = [f"{points[i][0]}-{points[i + 1][0]}: " + f"{fit_power_law(*zip(*points[i:i + 2]))[1]:.3f}"
                 for i in range(len(points) - 1)]
        print("local exponents: " + ", ".join(pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
