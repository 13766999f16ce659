"""``python -m bench profile``: where the time goes, by py-spy (sampling, native frames included).

Two paths, at each frame size asked for (default 1280x720 and 4096x4096):

* ``pipeline``: the in-process pipeline (``bench/profile_target.py`` under ``py-spy record``);
* ``grpc-inline`` and ``grpc-shm``: a real ``edge-agent serve`` process, which py-spy attaches to
  while this process sends it DetectAnomalies calls for the duration.

Each profile is written as collapsed stacks (``*.collapsed.txt``: open it in speedscope.app or feed it
to flamegraph.pl) and summarized as two top-N tables: **self** time by leaf frame (the C function or
Python line that was running), and **by agent function**: each sample charged to the deepest frame in
``edge_agent/`` (or ``engines/``), i.e. which piece of the agent, with everything it calls, costs what.
Samples outside the request path (start-up, model loading) and samples of threads that wait (for work,
a lock, the network) are left out. ONNX Runtime's own pool threads run no Python and are not sampled:
the calling thread's share of an inference is, so "inference" is understated; the phase times in the
benchmark table say how long inference really takes.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.agent import REPO_ROOT, AgentProcess, FrameSender
from bench.frames import make_frame, parse_size
from bench.models import write_conv_component, write_demo_component

RESULTS = Path(__file__).resolve().parent / "results" / "profiles"
DEMO_CACHE = Path(__file__).resolve().parent / ".cache" / "demo-models"
RATE_HZ = 200
TOP = 15
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<where>[^()]*)\)$")
_AGENT_PATHS = ("edge_agent/", "engines/")
# Where the request path lives in each kind of profile: samples elsewhere are left out. For the
# server: the handler thread (deserialize, DetectAnomalies, serialize, send) and gRPC's poller thread.
_MARKERS = {"pipeline": ("profiled_loop",), "grpc": ("_unary_response_in_pool", "_serve")}
# A sample inside one of these is a thread waiting (for work, a lock, the network), not working.
_WAITING = re.compile(r"^(epoll_wait|PyThread_acquire_lock_timed|pthread_cond_(timed)?wait|sem_(timed)?wait|"
                      r"_queue_SimpleQueue_get_impl|Condition\.wait|Event\.wait) ")


@dataclass
class Summary:
    name: str
    samples: int
    self_top: list[tuple[str, float]] = field(default_factory=list)
    agent_top: list[tuple[str, float]] = field(default_factory=list)
    note: str = ""

    def text(self) -> str:
        lines = [f"## {self.name}: {self.samples} samples{f' ({self.note})' if self.note else ''}", "",
                 "self time (leaf frame)                                                      share"]
        lines += [f"  {frame[:74]:74s} {share:5.1f}%" for frame, share in self.self_top]
        lines += ["", "by agent function (deepest edge_agent/ or engines/ frame, callees included)  share"]
        lines += [f"  {frame[:74]:74s} {share:5.1f}%" for frame, share in self.agent_top]
        return "\n".join(lines)


def _short(frame: str) -> str:
    """'detect (/work/main/edge_agent/inference.py:133)' -> 'detect (edge_agent/inference.py:133)'."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    where = match.group("where")
    for root in ("edge_agent/", "engines/", "bench/", "site-packages/", "lib/python"):
        if root in where:
            where = where[where.index(root):].replace("site-packages/", "")
            break
    where = re.sub(r"\.cpython-[^.]+\.so", ".so", where)
    where = re.sub(r"-[0-9a-f]{8}\.so", ".so", where)
    return f"{match.group('func')} ({where})"


def _function(frame: str) -> str:
    """The frame without its line number (all samples of a function add up); unnamed native code
    (an address) is charged to its library."""
    if frame.startswith("0x") and " (" in frame:
        return f"[unnamed code in {frame.split(' (', 1)[1].rstrip(')')}]"
    return re.sub(r":\d+\)$", ")", frame)


def _named(frame: str, markers: tuple[str, ...]) -> bool:
    function = frame.split(" (", 1)[0]
    return any(function == m or function.endswith("." + m) for m in markers)


def summarize(name: str, collapsed: Path, markers: str | tuple[str, ...], top: int = TOP) -> Summary:
    """Top self-time frames and agent functions among the samples under ``markers`` (threads working)."""
    if isinstance(markers, str):
        markers = (markers,)
    leaf: Counter[str] = Counter()
    agent: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if not any(_named(f, markers) for f in frames) or any(_WAITING.match(f) for f in frames):
            continue
        count = int(count_text)
        total += count
        frames = [_short(f) for f in frames]
        leaf[_function(frames[-1])] += count
        owner = next((f for f in reversed(frames) if any(p in f for p in _AGENT_PATHS)), None)
        agent[_function(owner) if owner else "(outside the agent: gRPC, protobuf, threads)"] += count
    summary = Summary(name, total)
    if total:
        summary.self_top = [(f, 100.0 * c / total) for f, c in leaf.most_common(top)]
        summary.agent_top = [(f, 100.0 * c / total) for f, c in agent.most_common(top)]
    return summary


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy (it is in the dev extra)")
    return found


def _record_args(output: Path, rate: int, native: bool) -> list[str]:
    args = [_py_spy(), "record", "--format", "raw", "--rate", str(rate), "--output", str(output)]
    return args + (["--native"] if native else [])


def profile_pipeline(models_dir: Path, component: str, size: str, seconds: float, output: Path,
                     rate: int, native: bool) -> None:
    command = _record_args(output, rate, native) + ["--", sys.executable, "-m", "bench.profile_target",
                                                    str(models_dir), component, size, str(seconds)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=seconds + 300)
    if done.returncode != 0 or "calls in" not in done.stderr:
        raise RuntimeError(f"the profiled pipeline failed ({done.returncode}):\n{done.stderr[-2000:]}")


def profile_grpc(models_dir: Path, component: str, size: str, transport: str, seconds: float, output: Path,
                 rate: int, native: bool, workdir: Path) -> int:
    frame = make_frame(*parse_size(size))
    calls = 0
    with AgentProcess(models_dir, workdir) as agent:
        agent.start_model(component)
        with FrameSender(f"unix://{agent.socket_path}", component, frame,
                         shared_memory=transport == "shm") as sender:
            for _ in range(2):
                sender.detect()
            command = _record_args(output, rate, native) + ["--pid", str(agent.pid), "--duration",
                                                            str(int(seconds))]
            recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            stop = threading.Event()
            time.sleep(0.5)  # py-spy attaches
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline and recorder.poll() is None and not stop.is_set():
                sender.detect()
                calls += 1
            try:
                recorder.wait(seconds + 60)
            except subprocess.TimeoutExpired:
                recorder.send_signal(signal.SIGINT)
                recorder.wait(30)
            if recorder.returncode not in (0, None) and not output.exists():
                error = recorder.stderr.read().decode(errors="replace") if recorder.stderr else ""
                raise RuntimeError(f"py-spy failed ({recorder.returncode}): {error[-500:]}")
    return calls


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demo", help="comma-separated: demo, conv (default demo)")
    parser.add_argument("--frames", default="1280x720,4096x4096")
    parser.add_argument("--paths", default="pipeline,grpc-inline,grpc-shm",
                        help="comma-separated: pipeline, grpc-inline, grpc-shm")
    parser.add_argument("--seconds", type=float, default=10.0, help="sampling time per profile")
    parser.add_argument("--rate", type=int, default=RATE_HZ, help="samples per second")
    parser.add_argument("--no-native", action="store_true", help="Python frames only (when --native fails)")
    parser.add_argument("--top", type=int, default=TOP)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    _py_spy()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    frames = [f.strip() for f in args.frames.split(",") if f.strip()]
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="eab-prof-"))
    summaries: list[Summary] = []
    try:
        models_dir = workdir / "models"
        components = {}
        if "demo" in models:
            components["demo"] = write_demo_component(models_dir, DEMO_CACHE).component
        if "conv" in models:
            components["conv"] = write_conv_component(models_dir, make_frame(256, 256)).component
        for key, component in components.items():
            for size in frames:
                for path in paths:
                    name = f"{path}-{key}-{size}"
                    output = args.output_dir / f"{name}.collapsed.txt"
                    print(f"profiling {name} for {args.seconds:.0f} s", file=sys.stderr, flush=True)
                    note = ""
                    if path == "pipeline":
                        profile_pipeline(models_dir, component, size, args.seconds, output, args.rate,
                                         not args.no_native)
                        marker = _MARKERS["pipeline"]
                    else:
                        calls = profile_grpc(models_dir, component, size, path.split("-", 1)[1], args.seconds, output,
                                             args.rate, not args.no_native, workdir)
                        marker = _MARKERS["grpc"]
                        note = f"{calls} calls"
                    summary = summarize(name, output, marker, args.top)
                    if not summary.samples:
                        raise RuntimeError(f"{output}: no samples under {marker}; is py-spy allowed to trace?")
                    summary.note = note
                    summaries.append(summary)
                    print(summary.text() + "\n", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    (args.output_dir / "summary.txt").write_text("\n\n".join(s.text() for s in summaries) + "\n")
    (args.output_dir / "summary.json").write_text(json.dumps(
        [{"name": s.name, "samples": s.samples, "note": s.note, "self": s.self_top, "agent": s.agent_top}
         for s in summaries], indent=2) + "\n")
    print(f"wrote {args.output_dir}/summary.txt and the collapsed stacks", file=sys.stderr)
    return 0
