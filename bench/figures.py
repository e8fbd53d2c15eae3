"""How the benchmarks print their figures: percentiles of millisecond samples."""

from __future__ import annotations

import statistics


def percentile(samples: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def line(label: str, samples: list[float], *, high: float = 95, width: int = 44) -> str:
    """``label  p50 … ms  pHIGH … ms  (n=…)``."""
    return (
        f"{label:<{width}} p50 {statistics.median(samples):7.2f} ms   "
        f"p{high:g} {percentile(samples, high):7.2f} ms   (n={len(samples)})"
    )
