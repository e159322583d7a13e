"""`kiln sweeps plot`: the sweep's metric against each hyperparameter it searched, one panel per
hyperparameter, the best trial marked. matplotlib is imported only when this runs (the worker
extra carries it; the gateway never imports this module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_sweep(sweep: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    names = sorted(sweep["space"])
    metric = sweep["search"].get("metric", "metric")
    done = [t for t in sweep["trials"] if t["value"] is not None]
    best = (sweep.get("best_trial") or {}).get("number")
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        space = sweep["space"][name]
        xs = [t["hyperparameters"][name] for t in done]
        if space["type"] == "choice":
            labels = [str(v) for v in space["values"]]
            xs = [labels.index(str(x)) if str(x) in labels else -1 for x in xs]
            ax.set_xticks(range(len(labels)), labels)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        else:
            if space["type"] == "log_uniform" or space.get("log"):
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlim(space["low"], space["high"])
        ys = [t["value"] for t in done]
        ax.scatter(xs, ys, color="tab:blue", label="trial")
        for t, x, y in zip(done, xs, ys, strict=True):
            if t["number"] == best:
                ax.scatter([x], [y], s=160, facecolors="none", edgecolors="tab:red", label="best")
            ax.annotate(str(t["number"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
    axes[0][0].legend(loc="best")
    fig.suptitle(f"{sweep['id']} ({sweep['search']['method']}, {sweep['status']})")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
