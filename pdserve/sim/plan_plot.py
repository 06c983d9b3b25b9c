"""The planner's frontier plot: unit cost per hour against goodput, one marker per candidate,
the Pareto front as a line, the recommendation circled."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from pdserve.sim.plan import frontier  # noqa: E402


def plot_frontier(points, out_path: str | Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in points:
        c = p.candidate
        marker = "o" if c.fleet.startswith("fused") else "s"
        ax.scatter(c.cost_per_hour, p.goodput, marker=marker, alpha=0.8)
        ax.annotate(f"{c.gpu} {c.fleet}", (c.cost_per_hour, p.goodput), fontsize=6)
    front = frontier(points)
    ax.plot([p.candidate.cost_per_hour for p in front], [p.goodput for p in front], "k--",
            lw=1, label="Pareto front")  # fmt: skip
    best = points[0]
    ax.scatter(best.candidate.cost_per_hour, best.goodput, s=200, facecolors="none",
               edgecolors="red", label="best goodput per $")  # fmt: skip
    ax.set_xlabel("fleet unit cost ($/h)")
    ax.set_ylabel("goodput at SLO (req/s)")
    ax.set_title("pdserve plan: o fused, s prefill/decode")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
