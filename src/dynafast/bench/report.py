"""`dynafast bench --report out.html`: one self-contained HTML page of a run.

It holds the summary table, latency over time (p50, p99 and max of each second, with the operations and errors
of each second below) and an HDR percentile plot (latency against percentile, the x axis in "nines", so that a
tail of 99.9% or 99.99% is as wide as the median). Plots are drawn with matplotlib's Agg backend (no display)
and embedded as PNG data: the file opens anywhere, offline, and can be mailed or attached as it is.
"""
from __future__ import annotations

import base64
import html
import io
import math

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, whatever the environment says
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter  # noqa: E402

_STYLE = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}td:first-child,th:first-child{text-align:left}
img{max-width:100%;display:block;margin:1em 0}.meta{color:#555}"""


def write(path, report: dict) -> None:
    """Write the HTML report of ``report`` (run_benchmark's, with its ``timeline`` and ``percentiles``)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(render(report))


def render(report: dict) -> str:
    title = f"dynafast bench: {report['target']} {report['address']}, workload {report['workload']}"
    meta = (f"{report['clients']} clients in {report['procs']} process(es), {report['records']:,} records, "
            f"{report['value_size']} B values, {report['elapsed_s']} s run")
    parts = [
        "<!doctype html>",
        f"<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>",
        f"<body><h1>{html.escape(title)}</h1><p class=\"meta\">{html.escape(meta)}</p>",
        _summary_table(report),
        "<h2>Latency over time</h2>",
        _img("latency-over-time", "p50, p99 and max latency, and operations, per second of the run",
             _timeline_png(report.get("timeline") or [])),
        "<h2>Latency by percentile</h2>",
        _img("percentiles", "latency by percentile, per operation (HDR percentile plot)",
             _percentile_png(report.get("percentiles") or {})),
        "</body></html>",
    ]
    return "\n".join(parts)


def _summary_table(report: dict) -> str:
    header = ["op", "count", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors"]
    rows = []
    for op, s in list(report["operations"].items()) + [("overall", report["overall"])]:
        errors = s["errors"] if isinstance(s["errors"], int) else sum(s["errors"].values())
        rows.append([op, f"{s['count']:,}", f"{s['ops_per_s']:,.1f}"]
                    + [_ms(s[k]) for k in ("p50_us", "p99_us", "p999_us", "max_us")] + [f"{errors:,}"])
    lines = ["<table id=\"summary\"><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"]
    for row in rows:
        lines.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>")
    lines.append("</table>")
    cpu = report.get("server_cpu")
    if cpu:
        lines.append(f"<p>server CPU: {cpu['cpu_s']} s over pids {cpu['pids']} = {cpu['us_per_op']} us per "
                     "operation</p>")
    if report.get("load"):
        load = report["load"]
        lines.append(f"<p>load: {load['count']:,} records in {load['seconds']} s "
                     f"({load['ops_per_s']:,.1f} ops/s)</p>")
    return "\n".join(lines)


def _ms(us) -> str:
    return "-" if us is None else f"{us / 1000:,.3f}"


def _img(element_id: str, alt: str, png: bytes) -> str:
    data = base64.b64encode(png).decode()
    return f"<img id=\"{element_id}\" alt=\"{html.escape(alt)}\" src=\"data:image/png;base64,{data}\">"


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _timeline_png(rows: list[dict]) -> bytes:
    figure, (latency, ops) = plt.subplots(2, 1, figsize=(10, 6), sharex=True,
                                          gridspec_kw={"height_ratios": [2, 1]})
    seconds = [row["second"] for row in rows]
    for key, label, style in (("max_us", "max", ":"), ("p99_us", "p99", "-"), ("p50_us", "p50", "-")):
        latency.plot(seconds, [None if row[key] is None else row[key] / 1000 for row in rows], style,
                     label=label, marker=".")
    _log_ms(latency)
    latency.grid(True, which="both", alpha=0.3)
    latency.legend(loc="upper right")
    ops.bar(seconds, [row["count"] for row in rows], width=0.8, label="operations")
    if any(row["errors"] for row in rows):
        ops.bar(seconds, [row["errors"] for row in rows], width=0.8, color="#c00", label="errors")
    ops.set_ylabel("per second")
    ops.set_xlabel("second of the run")
    ops.grid(True, alpha=0.3)
    ops.legend(loc="upper right")
    return _png(figure)


def _percentile_png(curves: dict[str, list]) -> bytes:
    figure, axes = plt.subplots(figsize=(10, 5))
    for op, points in curves.items():
        if not points:
            continue
        # x: the number of nines, -log10(1 - p); the maximum (p = 100) sits half a nine past the last point.
        nines = [-math.log10(1 - p / 100) if p < 100 else None for p, _ in points]
        last = max((x for x in nines if x is not None), default=0.0)
        xs = [last + 0.5 if x is None else x for x in nines]
        axes.plot(xs, [us / 1000 for _, us in points], label=op, linewidth=2 if op == "overall" else 1)
    ticks = [math.log10(2)] + list(range(1, 8))  # 50%, 90%, 99%, ...
    axes.xaxis.set_major_locator(FixedLocator(ticks))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _percent_label(x)))
    axes.set_xlim(left=math.log10(2))
    _log_ms(axes)
    axes.set_xlabel("percentile")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper left")
    return _png(figure)


def _log_ms(axes) -> None:
    """A log scale of milliseconds labelled as plain numbers (2, 5, 20), not powers of ten."""
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    # Between powers of ten only 2, 3 and 5 are labelled: a range over several decades stays legible.
    axes.yaxis.set_minor_formatter(FuncFormatter(
        lambda y, _: f"{y:g}" if y > 0 and round(y / 10 ** math.floor(math.log10(y))) in (2, 3, 5) else ""))
    axes.set_ylabel("latency (ms)")


def _percent_label(nines) -> str:
    nines = float(nines)  # matplotlib hands numpy integers, which refuse negative powers
    return f"{100 * (1 - 10 ** -nines):.{max(0, int(round(nines)) - 2)}f}%"
