"""How `ssmlora.scan.linear_scan` scales with sequence length on the CPU (target: time ∝ L^k with k <= 1.1).

For each L it times one forward + backward (w.r.t. v and θ) at batch 1, r = 8, takes the median over rounds
after a warm-up, fits k by least squares on log(time) vs log(L), and prints a markdown table. The per-token
Python loop (the reference the tests use) is timed at the shortest L only, to show the speed-up.

    python benchmarks/scan_scaling.py                                  # L = 1K … 32K, ~1 min on 2 cores
    python benchmarks/scan_scaling.py --lengths 1024 4096 --rounds 3 --direction bidirectional

One intra-op thread by default: on a small shared machine two threads contending with other jobs made single
steps 10-40x slower at random (OpenMP workers waiting on a busy core), which swamps the L-dependence.
At batch 1 and r = 8 the short lengths are dominated by fixed per-call overhead (a few dozen small kernels),
so the exponent over all L understates the asymptotic one; the fit over the longer half is printed as well.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch

from ssmlora.scan import DEFAULT_CHUNK, decay_from_logits, init_decay_logits, linear_scan


def naive_loop(v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    h = v.new_zeros(v.shape[0], v.shape[2])
    out = []
    for t in range(v.shape[1]):
        h = a * h + v[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


def step_time(fn, length: int, r: int, rounds: int, warmup: int = 2) -> float:
    """Median seconds of one forward + backward of `fn(v, a)` on (1, length, r) inputs."""
    g = torch.Generator().manual_seed(length)
    v = torch.randn(1, length, r, generator=g).requires_grad_()
    theta = init_decay_logits(r).requires_grad_()
    weights = torch.randn(1, length, r, generator=g)
    times = []
    for i in range(warmup + rounds):
        v.grad = theta.grad = None
        start = time.perf_counter()
        (fn(v, decay_from_logits(theta)) * weights).sum().backward()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def fit_exponent(lengths: list[int], times: list[float]) -> float:
    xs, ys = [math.log(n) for n in lengths], [math.log(t) for t in times]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024 * 2**i for i in range(6)])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK)
    parser.add_argument("--direction", default="causal", choices=["causal", "bidirectional"])
    parser.add_argument("--naive-rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"machine: {platform.processor() or platform.machine()} | {platform.platform()} | "
          f"torch {torch.__version__} | threads {torch.get_num_threads()}")
    print(f"linear_scan forward+backward, batch 1, r={args.r}, chunk={args.chunk}, direction={args.direction}, "
          f"median of {args.rounds} rounds\n")

    def scan(v, a):
        return linear_scan(v, a, direction=args.direction, chunk=args.chunk)

    times = []
    print("| L | time (ms) | µs / token |")
    print("|---:|---:|---:|")
    for length in args.lengths:
        times.append(step_time(scan, length, args.r, args.rounds))
        print(f"| {length} | {times[-1] * 1e3:.2f} | {times[-1] / length * 1e6:.3f} |", flush=True)
    if len(args.lengths) > 1:
        k = fit_exponent(args.lengths, times)
        print(f"\nfitted exponent (time ∝ L^k), all L: k = {k:.3f}  ({'OK' if k <= 1.1 else 'ABOVE'} the 1.1 target)")
        upper = len(args.lengths) // 2
        if len(args.lengths) - upper >= 2:
            k_long = fit_exponent(args.lengths[upper:], times[upper:])
            print(f"fitted exponent, L >= {args.lengths[upper]}: k = {k_long:.3f}")

    shortest = min(args.lengths)
    naive = step_time(naive_loop, shortest, args.r, args.naive_rounds, warmup=1)
    fast = times[args.lengths.index(shortest)]
    print(f"\nnaive per-token loop (causal) at L={shortest}: {naive * 1e3:.1f} ms "
          f"vs linear_scan {fast * 1e3:.2f} ms -> {naive / fast:.0f}x speed-up")


if __name__ == "__main__":
    main()
