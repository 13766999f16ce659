"""``python -m bench``: runs the benchmark, prints the table and writes the JSON.

    python -m bench                      # the quick preset (about 5 minutes on 2 cores)
    python -m bench --preset full        # 6-15 minutes, by the machine's load
    python -m bench --groups grpc,concurrency --frames 1280x720 --models conv --repeats 30
    python -m bench profile              # py-spy profiles of the pipeline and the gRPC path

Every row is a median and a p99 over repeated runs after warm-up, next to a floor measured in the
same run (interleaved with the row where the row allows it). Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from bench import report
from bench.baselines import ModelFloor, Throughput, naive_preprocess, ort_sweep
from bench.config import ALL_GROUPS, PRESETS, BenchConfig, preset
from bench.frames import make_frame, parse_size
from bench.models import ModelSpec, write_conv_component, write_demo_component
from bench.targets import check
from bench.timing import Row, Stats, measure

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUTPUT = BENCH_DIR / "results" / "latest.json"
DEMO_CACHE = BENCH_DIR / ".cache" / "demo-models"


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                        help="smoke (the test suite's), quick (default, about 5 min) or full (6-15 min)")
    parser.add_argument("--models", type=_csv, help="comma-separated: demo, conv (default both)")
    parser.add_argument("--frames", type=_csv, help="comma-separated WIDTHxHEIGHT (default 256x256,1280x720,4096x4096)")
    parser.add_argument("--groups", type=_csv, help=f"comma-separated, from: {', '.join(ALL_GROUPS)} (default all)")
    parser.add_argument("--repeats", type=int, help="timed repeats of every latency row, whatever the frame size")
    parser.add_argument("--warmup", type=int, help="untimed calls before each row")
    parser.add_argument("--clients", type=lambda s: tuple(int(x) for x in _csv(s)),
                        help="comma-separated client counts for the throughput rows (default 1,4,8)")
    parser.add_argument("--requests", type=int, help="requests per client in the throughput rows, any frame size")
    parser.add_argument("--conv-width", type=float, help="channel multiplier of the conv net (default 1.0)")
    parser.add_argument("--no-fake-gpu", action="store_true", help="skip the fake-GPU StartModel rows")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON file (default {DEFAULT_OUTPUT})")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for BENCHMARKS.md)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the models, sockets and agent logs")
    return parser


def config_from(args: argparse.Namespace) -> BenchConfig:
    config = preset(args.preset, models=args.models, groups=args.groups, warmup=args.warmup, clients=args.clients,
                    conv_width=args.conv_width)
    if args.frames:
        config = config.with_frames(tuple(args.frames))
    if args.repeats is not None:
        config = replace(config, repeats_small=args.repeats, repeats_medium=args.repeats,
                         repeats_large=args.repeats)
    if args.requests is not None:
        config = replace(config, requests_small=args.requests, requests_medium=args.requests,
                         requests_large=args.requests)
    if args.no_fake_gpu:
        config = replace(config, fake_gpu=False)
    unknown = [g for g in config.groups if g not in ALL_GROUPS]
    if unknown:
        raise SystemExit(f"unknown group(s) {unknown}; choose from {', '.join(ALL_GROUPS)}")
    unknown = [m for m in config.models if m not in ("demo", "conv")]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose demo and/or conv")
    for frame in config.frames:
        parse_size(frame)
    return config


class Run:
    """One benchmark run: the models and frames it made, and the rows it measured."""

    def __init__(self, config: BenchConfig, workdir: Path, *, log: Callable[[str], None]) -> None:
        self.config = config
        self.workdir = workdir
        self.models_dir = workdir / "models"
        self.log = log
        self.rows: list[Row] = []
        self.failures: list[str] = []
        self.frames: dict[str, np.ndarray] = {}
        self.models: list[ModelSpec] = []
        self.floors: dict[str, ModelFloor] = {}
        self.best: dict[str, Throughput] = {}

    def prepare(self) -> None:
        for name in self.config.frames:
            self.frames[name] = make_frame(*parse_size(name))
        reference = make_frame(256, 256)
        if "demo" in self.config.models:
            self.models.append(write_demo_component(self.models_dir, DEMO_CACHE))
        if "conv" in self.config.models:
            self.models.append(write_conv_component(self.models_dir, reference, width=self.config.conv_width))
        for spec in self.models:
            self.floors[spec.key] = ModelFloor.load(self.models_dir / spec.component, reference)

    def group(self, name: str, body: Callable[[], list[Row]]) -> None:
        if name not in self.config.groups:
            return
        started = time.perf_counter()
        self.log(f"{name}: measuring")
        try:
            rows = body()
        except Exception as exc:
            self.failures.append(f"{name}: {type(exc).__name__}: {exc}")
            self.log(f"{name}: FAILED\n{traceback.format_exc()}")
            rows = [Row.unavailable(name, "group failed", f"{type(exc).__name__}: {str(exc)[:200]}")]
        self.rows += rows
        self.log(f"{name}: {len(rows)} rows in {time.perf_counter() - started:.0f} s")

    # -- groups ----------------------------------------------------------------------------

    def baseline(self) -> list[Row]:
        rows = []
        config = self.config
        for spec in self.models:
            floor = self.floors[spec.key]
            mine, spinning = floor.paired_with_spinning(warmup=config.warmup, repeats=config.floor_repeats)
            stats = Stats.of(mine)
            rows.append(Row.timed("baseline", "ORT session.run (floor)", stats, model=spec.key, floor="itself",
                                  floor_ms=stats.median * 1e3, note=spec.description))
            rows.append(Row.timed("baseline", "ORT session.run, ORT's default spin-waiting", Stats.of(spinning),
                                  model=spec.key, floor="ORT floor", floor_ms=stats.median * 1e3,
                                  note=f"its threads spin {floor.spin_s * 1e3:.0f} ms after a run (measured); "
                                       "the agent's stop when a run returns (--ort-spinning: they go on)",
                                  spin_window_ms=floor.spin_s * 1e3))
        for spec in self.models:
            floor = self.floors[spec.key]
            for name, frame in self.frames.items():
                width, height = parse_size(name)
                tensor = naive_preprocess(frame, floor.spec)
                assert tensor.shape == floor.tensor.shape, (tensor.shape, floor.tensor.shape)
                stats = measure(floor.preprocess(frame), warmup=config.warmup,
                                repeats=min(config.floor_repeats, config.repeats_for(width, height)),
                                budget_s=config.row_budget_s)
                rows.append(Row.timed("baseline", "naive pre-process (Pillow+numpy)", stats, model=spec.key,
                                      frame=name, floor="itself", floor_ms=stats.median * 1e3))
        return rows

    def ort_alone(self) -> list[Row]:
        rows = []
        for spec in self.models:
            floor = self.floors[spec.key]
            floor_ms = next((r.median for r in self.rows if r.group == "baseline" and r.model == spec.key
                             and r.frame == "-" and r.median), None)
            sweep, best = ort_sweep(spec.key, floor.component_dir / "model.onnx", floor.spec.name, floor.tensor,
                                    runs=self.config.ort_runs, floor_ms=floor_ms,  # type: ignore[arg-type]
                                    settle_s=floor.settle_s)
            self.best[spec.key] = best
            rows += sweep
        return rows

    def pipeline(self) -> list[Row]:
        from bench.pipeline import pipeline_rows

        return pipeline_rows(self.config, self.models, self.models_dir, self.frames, self.floors)

    def rpc(self) -> list[Row]:
        from bench.rpc import rpc_rows

        return rpc_rows(self.config, self.models, self.models_dir, self.frames, self.floors, self.best,
                        self.workdir)

    def batching(self) -> list[Row]:
        from bench.batching import batching_rows

        return batching_rows(self.config, self.models, self.models_dir, self._frames_for_batching(), self.workdir)

    def overload(self) -> list[Row]:
        from bench.batching import overload_rows

        return overload_rows(self.config, self.models, self.models_dir, self._frames_for_batching(), self.workdir)

    def _frames_for_batching(self) -> dict[str, np.ndarray]:
        return {name: self.frames[name] if name in self.frames else make_frame(*parse_size(name))
                for name in self.config.batching_frames}

    def cpu(self) -> list[Row]:
        from bench.cpu import cpu_rows

        frames = {n: f for n, f in self.frames.items()
                  if self.config.cpu_frames is None or n in self.config.cpu_frames}
        return cpu_rows(self.config, self.models, self.models_dir, frames, self.floors)

    def startup(self) -> list[Row]:
        from bench.startup import startup_rows

        return startup_rows(self.config, self.models, self.models_dir, self.floors, self.workdir)

    def memory(self) -> list[Row]:
        from bench.memory import memory_rows

        name = max(self.frames, key=lambda n: parse_size(n)[0] * parse_size(n)[1])
        return memory_rows(self.config, self.models, self.models_dir, name, self.frames[name], self.workdir)

    def candidates(self) -> list[Row]:
        from bench.candidates import candidate_rows, thread_setting_rows

        frames = {n: f for n, f in self.frames.items()
                  if self.config.candidate_frames is None or n in self.config.candidate_frames}
        rows = candidate_rows(self.config, self.models, self.models_dir, frames)
        if "concurrency" in self.config.groups and self.config.thread_candidate:
            rows += thread_setting_rows(self.config, self.models, self.models_dir, self.frames, self.floors,
                                        self.best, self.workdir, self.rows)
        return rows


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["profile"]:
        from bench.profiling import main as profile_main

        return profile_main(argv[1:])
    args = build_parser().parse_args(argv)
    config = config_from(args)
    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - began:6.1f} s] {message}", file=sys.stderr, flush=True)

    # Unix socket paths must stay under 108 bytes: a short directory under /tmp.
    workdir = Path(tempfile.mkdtemp(prefix="eab-"))
    machine_info = report.machine()
    log(f"preset {config.preset}: models {','.join(config.models)}, frames {','.join(config.frames)}, "
        f"groups {','.join(config.groups)}; work directory {workdir}")
    run = Run(config, workdir, log=log)
    try:
        run.prepare()
        run.group("baseline", run.baseline)
        run.group("ort-alone", run.ort_alone)
        run.group("pipeline", run.pipeline)
        if "grpc" in config.groups or "concurrency" in config.groups:  # one agent serves both groups
            run.group("grpc" if "grpc" in config.groups else "concurrency", run.rpc)
        run.group("batching", run.batching)
        run.group("overload", run.overload)
        run.group("cpu", run.cpu)
        run.group("startup", run.startup)
        run.group("memory", run.memory)
        run.group("candidates", run.candidates)
    finally:
        seconds = time.perf_counter() - began
        targets = check(run.rows, [spec.key for spec in run.models])
        print(report.markdown_table(run.rows) if args.markdown else report.text_table(run.rows))
        print()
        print("Targets:")
        print(report.targets_text(targets, markdown=args.markdown))
        report.write_json(args.output, config=asdict(config), machine_info=machine_info, rows=run.rows,
                          targets=targets, failures=run.failures, seconds=seconds)
        log(f"wrote {args.output} ({seconds:.0f} s in all)")
        if run.failures or args.keep_workdir:
            log(f"kept {workdir} (agent logs, models)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if run.failures:
        print("\nFailures:\n" + "\n".join(run.failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
