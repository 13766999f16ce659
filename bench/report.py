"""The run's outputs: the machine it ran on, the table (text or Markdown) and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.targets import Target
from bench.timing import Row

REPO_ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("group", "row", "model", "frame", "n", "median", "p99", "unit", "x floor", "floor", "thru/s", "note")


def machine() -> dict[str, Any]:
    """CPU, cores, memory, Python and library versions, and the checkout (read-only git calls)."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    versions = {}
    for package in ("onnxruntime", "numpy", "Pillow", "grpcio", "protobuf", "onnx", "edge-agent"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "git": _git(),
        "load_average_at_start": os.getloadavg(),
    }


def _git() -> dict[str, Any]:
    def run(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = run("status", "--porcelain")
    return {"commit": run("rev-parse", "--short", "HEAD"), "dirty": bool(status) if status is not None else None}


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cells(row: Row) -> list[str]:
    if row.status != "ok":
        return [row.group, row.name, row.model, row.frame, "-", "-", "-", row.unit, "-", "-", "-", row.status]
    floor = row.floor
    if row.floor_value is not None and row.throughput is None:
        floor = f"{row.floor} {_number(row.floor_value)}"
    return [row.group, row.name, row.model, row.frame, str(row.n), _number(row.median), _number(row.p99), row.unit,
            _number(row.ratio), floor, _number(row.throughput), row.note]


def ordered(rows: list[Row]) -> list[Row]:
    """Rows grouped in the suite's group order, each group in measurement order."""
    from bench.config import ALL_GROUPS

    rank = {group: index for index, group in enumerate(ALL_GROUPS)}
    return sorted(rows, key=lambda row: rank.get(row.group, len(rank)))


def text_table(rows: list[Row]) -> str:
    table = [list(COLUMNS)] + [cells(row) for row in ordered(rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS) - 1)]
    lines = []
    for index, line in enumerate(table):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) + "  " + line[-1])
        if index == 0:
            lines.append("-" * (sum(widths) + 2 * len(widths) + 4))
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in ordered(rows):
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells(row)) + " |")
    return "\n".join(lines)


def targets_text(targets: list[Target], markdown: bool = False) -> str:
    if markdown:
        lines = ["| target | model | frame | measured | limit | status | detail |", "|---|---|---|---|---|---|---|"]
        for t in targets:
            lines.append(f"| {t.name} | {t.model} | {t.frame} | {_number(t.measured)} | {t.limit} | "
                         f"**{t.verdict}** | {t.detail} |")
        return "\n".join(lines)
    return "\n".join(f"[{t.verdict:>12}] {t.name} ({t.model}, {t.frame}): {t.detail}" for t in targets)


def write_json(path: Path, *, config: dict[str, Any], machine_info: dict[str, Any], rows: list[Row],
               targets: list[Target], failures: list[str], seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "schema": 1,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(seconds, 1),
        "machine": {**machine_info, "load_average_at_end": os.getloadavg()},
        "config": config,
        "rows": [row.as_dict() for row in ordered(rows)],
        "targets": [target.as_dict() for target in targets],
        "failures": failures,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.report [RESULTS.json]``: a run's table and targets as Markdown (for BENCHMARKS.md)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else Path(__file__).resolve().parent / "results" / "latest.json"
    document = json.loads(path.read_text())
    rows = [Row(**row) for row in document["rows"]]
    targets = [Target(**target) for target in document["targets"]]
    info = document["machine"]
    versions = info.get("versions", {})
    print(f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, Linux {info['kernel']}, "
          f"Python {info['python']}, ONNX Runtime {versions.get('onnxruntime')}, numpy {versions.get('numpy')}, "
          f"Pillow {versions.get('Pillow')}, grpcio {versions.get('grpcio')}; commit {info['git'].get('commit')}"
          f"{' (with uncommitted changes)' if info['git'].get('dirty') else ''}; load average "
          f"{info['load_average_at_start'][0]:.1f} at start, {info['load_average_at_end'][0]:.1f} at end; "
          f"preset {document['config']['preset']}, {document['seconds']:.0f} s.\n")
    print(markdown_table(rows))
    print()
    print(targets_text(targets, markdown=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
