"""The upcoming-fires chart of /delayed/: which buckets a range is cut into, where they
start, and the bars' geometry. Callers hand in counts per bucket start and get back
numbers to copy into SVG; the markup (links, titles, classes) stays in the template.
No Django, no database.

Buckets are aligned to whole multiples of their width since the Unix epoch (UTC): a
5-minute bucket starts at :00, :05, ..., a 6-hour bucket at 00:00, 06:00, 12:00 and
18:00 UTC, so the same burst falls in the same bar whenever the page is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The drawing's size in SVG user units (the CSS scales it to the page's width).
WIDTH = 960.0
HEIGHT = 180.0
LEFT = 44.0  # room for the count axis
RIGHT = 8.0
TOP = 18.0  # room for a hovered bar's count above it
BOTTOM = 22.0  # room for the time labels
GAP = 0.18  # of a bucket's width left between bars


@dataclass(frozen=True)
class ChartRange:
    name: str  # the URL's value (?chart=)
    label: str
    bucket_label: str  # "5-minute": what one bar counts
    bucket: timedelta
    buckets: int
    label_every: int  # a time label under every n-th bar
    label_format: str  # strftime of a bar's start, UTC

    @property
    def span(self) -> timedelta:
        return self.bucket * self.buckets


RANGES: dict[str, ChartRange] = {
    r.name: r
    for r in (
        ChartRange("hour", "next hour", "5-minute", timedelta(minutes=5), 12, 3, "%H:%M"),
        ChartRange("day", "next day", "hourly", timedelta(hours=1), 24, 3, "%H:00"),
        ChartRange("week", "next week", "6-hour", timedelta(hours=6), 28, 4, "%a %H:%M"),
    )
}
DEFAULT_RANGE = "day"


def bucket_floor(moment: datetime, bucket: timedelta) -> datetime:
    """The start of the bucket `moment` falls in (UTC, aligned on the epoch)."""
    whole = (moment - EPOCH) // bucket
    return EPOCH + whole * bucket


@dataclass(frozen=True)
class Bar:
    start: datetime
    end: datetime
    count: int
    x: float
    y: float  # top of the bar
    width: float
    height: float
    label_y: float  # where a hovered bar shows its count

    @property
    def center(self) -> float:
        return round(self.x + self.width / 2, 2)


@dataclass(frozen=True)
class Tick:
    x: float
    y: float
    text: str


@dataclass(frozen=True)
class FireChart:
    range: ChartRange
    start: datetime
    end: datetime
    bars: list[Bar]
    x_labels: list[Tick]
    y_labels: list[Tick]  # the count axis: 0 and the top
    total: int  # fires inside the chart's window
    peak: int
    width: float = WIDTH
    height: float = HEIGHT
    top: float = TOP
    baseline: float = HEIGHT - BOTTOM
    left: float = LEFT
    right: float = WIDTH - RIGHT

    @property
    def plot_height(self) -> float:
        return self.baseline - self.top


def fire_chart(*, chart: ChartRange, now: datetime, counts: Mapping[datetime, int]) -> FireChart:
    """The bars of `chart` from the bucket holding `now`: `counts` maps a bucket's start
    to its fires (missing: none). A bar's height is its share of the busiest bar; a
    bucket with any fire is at least a pixel and a half tall, so one message in a week of
    thousands still shows."""
    start = bucket_floor(now, chart.bucket)
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    step = plot_w / chart.buckets
    values = [int(counts.get(start + i * chart.bucket, 0)) for i in range(chart.buckets)]
    peak = max(values, default=0)
    baseline = HEIGHT - BOTTOM
    bars = []
    for i, count in enumerate(values):
        height = 0.0 if peak == 0 or count == 0 else max(1.5, plot_h * count / peak)
        x = LEFT + i * step + step * GAP / 2
        bars.append(
            Bar(
                start=start + i * chart.bucket,
                end=start + (i + 1) * chart.bucket,
                count=count,
                x=round(x, 2),
                y=round(baseline - height, 2),
                width=round(step * (1 - GAP), 2),
                height=round(height, 2),
                label_y=round(baseline - height - 4, 2),
            )
        )
    x_labels = [
        Tick(x=round(LEFT + i * step, 2), y=HEIGHT - 6, text=bars[i].start.astimezone(UTC).strftime(chart.label_format))
        for i in range(0, chart.buckets, chart.label_every)
    ]
    y_labels = [Tick(x=LEFT - 6, y=baseline, text="0")]
    if peak:
        y_labels.append(Tick(x=LEFT - 6, y=TOP + 4, text=f"{peak:,}"))
    return FireChart(
        range=chart,
        start=start,
        end=start + chart.span,
        bars=bars,
        x_labels=x_labels,
        y_labels=y_labels,
        total=sum(values),
        peak=peak,
    )
