"""The dashboards' building blocks (deploy/grafana/dashboards.py renders them)."""

from __future__ import annotations

from dataclasses import dataclass, field

DS = {"type": "prometheus", "uid": "kiln-prometheus"}
RI = "$__rate_interval"


@dataclass
class Panel:
    title: str
    exprs: list[tuple[str, str]]  # (expr, legend)
    unit: str = "short"
    kind: str = "timeseries"  # or "stat", or "row" (a section header, no queries)
    description: str = ""


@dataclass
class Board:
    uid: str
    title: str
    panels: list[Panel]
    variables: list[tuple[str, str, str]] = field(default_factory=list)  # (name, metric, label)


def q(quantile: float, metric: str, sel: str, by: str = "le") -> str:
    return f"histogram_quantile({quantile}, sum by ({by}) (rate({metric}_bucket{{{sel}}}[{RI}])))"


MV = 'model=~"$model", version=~"$version"'
