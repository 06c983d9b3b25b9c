"""PNG plots of benchmark results (matplotlib, Agg backend: no display needed).

- `plot_cdfs`: TTFT and ITL CDFs of one or more serve results, overlaid.
- `plot_sweep`: goodput, SLO attainment and p50/p99 latency against request rate, one line per
  sweep result, overlaid.
- `plot_results`: whatever the files are (all serve or all sweep), the right plot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def _label(result: dict, index: int) -> str:
    return result.get("label") or f"run {index}"


def _cdf(ax, values_s: Sequence[float], label: str) -> None:
    xs = sorted(v * 1000 for v in values_s if v is not None)
    if not xs:
        return
    ys = [(i + 1) / len(xs) for i in range(len(xs))]
    ax.step(xs, ys, where="post", label=label)


def plot_cdfs(results: Sequence[dict], out_path: str | Path) -> Path:
    """TTFT and ITL CDFs (ms) of serve results; one line per result."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, result in enumerate(results):
        _cdf(axes[0], result.get("ttfts_s", []), _label(result, i))
        _cdf(axes[1], result.get("itls_s", []), _label(result, i))
    for ax, name in zip(axes, ("TTFT", "ITL")):
        ax.set_xlabel(f"{name} (ms)")
        ax.set_ylabel("fraction of samples")
        ax.set_title(f"{name} CDF")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out_path)


def plot_sweep(results: Sequence[dict], out_path: str | Path) -> Path:
    """Goodput, attainment and TTFT/TPOT p50/p99 against request rate; one line per sweep."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for i, result in enumerate(results):
        label = _label(result, i)
        points = sorted(result["points"], key=lambda p: p["request_rate"])
        rates = [p["request_rate"] for p in points]
        sums = [p["summary"] for p in points]
        axes[0].plot(rates, [s.get("goodput") or 0 for s in sums], "o-", label=f"{label} goodput")
        axes[0].plot(rates, [s["request_throughput"] for s in sums], "x--", label=f"{label} req/s")
        attain = [100 * (s.get("slo_attainment") or 0) for s in sums]
        axes[1].plot(rates, attain, "o-", label=label)
        for metric, style in (("ttft", "-"), ("tpot", "--")):
            for p in ("p50", "p99"):
                ys = [s.get(f"{p}_{metric}_ms") for s in sums]
                axes[2].plot(rates, ys, style, marker=".", label=f"{label} {p} {metric.upper()}")
        if result.get("attainment_target") is not None and i == 0:
            axes[1].axhline(100 * result["attainment_target"], color="gray", ls=":", label="target")
    titles = ("goodput (req/s)", "SLO attainment (%)", "latency (ms)")
    for ax, title in zip(axes, titles):
        ax.set_xlabel("request rate (req/s)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[2].set_yscale("log")
    return _save(fig, out_path)


def plot_results(results: Sequence[dict], out_path: str | Path) -> Path:
    kinds = {r.get("kind") for r in results}
    if kinds == {"sweep"}:
        return plot_sweep(results, out_path)
    if kinds == {"serve"}:
        return plot_cdfs(results, out_path)
    raise ValueError(
        f"cannot overlay result kinds {sorted(map(str, kinds))}: give all serve or all sweep"
    )


def _save(fig, out_path: str | Path) -> Path:
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
