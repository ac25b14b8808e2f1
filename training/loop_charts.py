"""Geometry of the loop page's two inline SVG charts (no chart library): the headline metric of
every version over time with the live one marked, and labels per day against cycles; and the
models page's chart of every metric over the versions (rag.charts draws the axes)."""

from rag.charts import line_chart

METRIC_WIDTH = 560
METRIC_HEIGHT = 140
LABEL_BAR = 14
LABEL_GAP = 4
LABEL_HEIGHT = 90


def metric_chart(points) -> dict | None:
    """Points of the versions that have the metric, spread evenly by creation order (a version's
    x is its place in the lineage, not its date: a burst of retraining stays readable)."""
    scored = [point for point in points if point.value is not None]
    if not scored:
        return None
    low = min(0.0, min(point.value for point in scored))
    high = max(1.0, max(point.value for point in scored))
    last = max(1, len(scored) - 1)
    dots = []
    for i, point in enumerate(scored):
        dots.append({
            "x": round(20 + (METRIC_WIDTH - 40) * i / last, 1) if len(scored) > 1 else METRIC_WIDTH / 2,
            "y": round(METRIC_HEIGHT - 10 - (METRIC_HEIGHT - 20) * (point.value - low) / (high - low), 1),
            "name": point.name,
            "value": point.value,
            "status": point.status,
            "is_live": point.is_live,
            "created_at": point.created_at,
        })  # fmt: skip
    return {
        "dots": dots,
        "line": " ".join(f"{dot['x']},{dot['y']}" for dot in dots),
        "width": METRIC_WIDTH,
        "height": METRIC_HEIGHT,
        "low": low,
        "high": high,
        "live": next((dot for dot in dots if dot["is_live"]), None),
    }


def labels_and_cycles_chart(labels_per_day, cycles_per_day) -> dict:
    most = max((n for _, n in labels_per_day), default=0)
    bars = []
    for i, (day, count) in enumerate(labels_per_day):
        height = round(LABEL_HEIGHT * count / most) if most else 0
        if count and height < 2:
            height = 2
        x = i * (LABEL_BAR + LABEL_GAP)
        bars.append({
            "x": x, "y": LABEL_HEIGHT - height + 12, "height": height, "day": day, "count": count,
            "cycles": cycles_per_day.get(day, 0), "marker_x": x + LABEL_BAR / 2,
            "tick": i % 7 == 0 or i == len(labels_per_day) - 1,
        })  # fmt: skip
    return {
        "bars": bars,
        "width": len(labels_per_day) * (LABEL_BAR + LABEL_GAP),
        "height": LABEL_HEIGHT + 12,
        "bar_width": LABEL_BAR,
        "most": most,
        "labels": sum(n for _, n in labels_per_day),
        "cycles": sum(cycles_per_day.values()),
    }


def metrics_over_versions(components) -> list[dict]:
    """One chart per component and metric (training.selectors.ComponentVersions): the metric of
    each version that has it, oldest first, the live version marked, its value on hover.
    Versions are evenly spaced by creation order, as on the loop page."""
    charts = []
    for group in components:
        versions = sorted(group.versions, key=lambda version: (version.created_at, version.pk))
        for name in group.metric_names:
            scored = [v for v in versions if isinstance(v.metrics.get(name), int | float) and not isinstance(v.metrics.get(name), bool)]
            if not scored:
                continue
            live = next((i for i, v in enumerate(scored) if v.status == "live"), None)
            chart = line_chart(
                [float(v.metrics[name]) for v in scored],
                labels=[v.name for v in scored],
                titles=[f"{v.name} ({v.status}): {name} {float(v.metrics[name]):.3f}" for v in scored],
                marked=live,
                classes=["dot-rejected" if v.status == "rejected" else "" for v in scored],
            )
            charts.append({"component": group.component, "metric": name, "svg": chart,
                           "live": scored[live] if live is not None else None})  # fmt: skip
    return charts
