"""The report as text: the figures table, ratios, CPU per command and memory."""

from __future__ import annotations

from bench.harness import Report

__all__ = ["render"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(report: Report) -> str:
    """A plain-text (Markdown-compatible) rendering of a report."""
    lines = []
    if report.machine:
        lines += [", ".join(f"{name}: {value}" for name, value in report.machine.items()), ""]
    lines += [
        "| measured | rate | p50 ms | p99 ms | errors | note |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in report.rows:
        lines.append(
            f"| {row.name} | {row.rate:,.0f} {row.unit} | {_ms(row.p50_ms)} | {_ms(row.p99_ms)}"
            f" | {row.errors} | {row.note} |"
        )
    for name, why in report.skipped.items():
        lines.append(f"| {name} | skipped | - | - | - | {why} |")
    for name, why in report.repeated.items():
        reason = why.replace("|", "/")
        lines.append(f"| ({name}) | repeated | - | - | - | the broker went away: {reason} |")
    if report.ratios:
        lines += ["", "| ratio | value |", "|---|---:|"]
        lines += [f"| {name} | {value:.2f}x |" for name, value in report.ratios.items()]
    if report.targets:
        verdict = {True: "met", False: "not met", None: "-"}
        lines += ["", "| target | this run | |", "|---|---:|---|"]
        lines += [f"| {t.name} | {t.measured} | {verdict[t.met]} |" for t in report.targets]
    if report.cpu_per_command_us:
        lines += ["", "| CPU per command (µs) | process | µs |", "|---|---|---:|"]
        for phase, figures in report.cpu_per_command_us.items():
            lines += [
                f"| {phase} | {name} | {'n/a (restarted)' if us is None else f'{us:,.0f}'} |"
                for name, us in figures.items()
            ]
    if report.peak_rss_mb:
        lines += ["", "| peak resident memory | MB |", "|---|---:|"]
        lines += [f"| {name} | {mb:.1f} |" for name, mb in report.peak_rss_mb.items()]
    if report.memory:
        first = next(iter(report.memory.values()))
        window, commands = int(first["window"]), int(first["commands"])
        lines += [
            "",
            f"| resident memory (MB), {commands:,} commands | before | after the first"
            f" {window:,} | before the last {window:,} | after all |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {name} | {m['before']:.1f} | {m['after first window']:.1f}"
            f" | {m['before last window']:.1f} | {m['after all']:.1f} |"
            for name, m in report.memory.items()
        ]
    if report.phase_seconds:
        lines += ["", "| phase | seconds |", "|---|---:|"]
        lines += [f"| {name} | {sec:,.0f} |" for name, sec in report.phase_seconds.items()]
    return "\n".join(lines)
