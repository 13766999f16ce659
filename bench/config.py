"""What a run measures: presets (smoke, quick, full) and the options that override them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

ALL_GROUPS = ("baseline", "ort-alone", "pipeline", "grpc", "concurrency", "batching", "overload", "cpu", "startup",
              "memory", "candidates")
DEFAULT_FRAMES = ("256x256", "1280x720", "4096x4096")
DEFAULT_MODELS = ("demo", "conv")


@dataclass(frozen=True)
class BenchConfig:
    """Knobs of one run; every count is per row."""

    preset: str = "quick"
    models: tuple[str, ...] = DEFAULT_MODELS
    frames: tuple[str, ...] = DEFAULT_FRAMES
    groups: tuple[str, ...] = ALL_GROUPS
    warmup: int = 2
    # Timed repeats per latency row, by frame area: small (<= 1 MP), medium (<= 4 MP), large.
    repeats_small: int = 20
    repeats_medium: int = 12
    repeats_large: int = 5
    row_budget_s: float = 15.0  # a row stops repeating once past this (never under 3 samples)
    floor_repeats: int = 30  # ORT floor and naive pre-processing, measured alone
    ort_runs: int = 24  # inferences per ORT-alone throughput setting
    clients: tuple[int, ...] = (1, 4, 8)
    # Requests per client in the throughput rows, by frame area as above.
    requests_small: int = 8
    requests_medium: int = 4
    requests_large: int = 1
    concurrency_frames: tuple[str, ...] | None = None  # None: every frame
    cold_starts: int = 2  # fresh agent processes per backend for the cold StartModel rows
    warm_starts: int = 3  # StopModel + StartModel in the same agent, per cold start
    memory_runs: int = 1  # fresh agent processes for the memory rows
    memory_calls: int = 2  # DetectAnomalies per transport and model before reading the peak
    fake_gpu: bool = True
    conv_width: float = 1.0  # the conv net's channel multiplier (1.0: 3.9 M parameters)
    candidate_frames: tuple[str, ...] | None = None  # None: every frame
    thread_candidate: bool = True  # the agent again with EDGE_AGENT_INTRA_OP_THREADS=1, most clients
    # Dynamic batching rows: clients, requests per client and round, and the frames (model-sized by
    # default: the inference is then most of the work, so batching shows most).
    batching_frames: tuple[str, ...] = ("256x256",)
    batching_clients: int = 8
    batching_requests: int = 4  # per client, variant and round
    batching_rounds: int = 3
    # Overload rows: the agent's per-model bound, the clients (more than the bound) and seconds each.
    overload_bound: int = 8
    overload_clients: int = 32
    overload_seconds: float = 6.0
    # CPU rows: one camera's frame rate, calls per round, rounds (each variant and ORT alone in
    # turn), and the frames (None: every frame).
    cpu_fps: float = 20.0
    cpu_calls: int = 15
    cpu_rounds: int = 2
    cpu_frames: tuple[str, ...] | None = ("256x256", "1280x720")
    extra: dict[str, str] = field(default_factory=dict)

    def with_frames(self, frames: tuple[str, ...]) -> BenchConfig:
        """The same run on ``frames``: each group's own choice of frames keeps those among them,
        or takes them all when it kept none (asking for a frame never empties a group)."""
        def keep(chosen: tuple[str, ...] | None) -> tuple[str, ...] | None:
            if chosen is None:
                return None
            kept = tuple(f for f in chosen if f in frames)
            return kept or None

        return replace(self, frames=frames, concurrency_frames=keep(self.concurrency_frames),
                       candidate_frames=keep(self.candidate_frames), cpu_frames=keep(self.cpu_frames))

    def repeats_for(self, width: int, height: int) -> int:
        return self._by_area(width, height, self.repeats_small, self.repeats_medium, self.repeats_large)

    def requests_for(self, width: int, height: int) -> int:
        return self._by_area(width, height, self.requests_small, self.requests_medium, self.requests_large)

    @staticmethod
    def _by_area(width: int, height: int, small: int, medium: int, large: int) -> int:
        area = width * height
        return small if area <= 1 << 20 else medium if area <= 4 << 20 else large


PRESETS: dict[str, BenchConfig] = {
    # The test suite's: one small frame, a narrow conv net only, two or three samples everywhere.
    "smoke": BenchConfig(preset="smoke", models=("conv",), frames=("256x256",), warmup=1, repeats_small=3,
                         repeats_medium=3, repeats_large=3, row_budget_s=2.0, floor_repeats=3, ort_runs=4,
                         clients=(1, 2), requests_small=2, requests_medium=2, requests_large=1, cold_starts=1,
                         warm_starts=1, memory_runs=1, memory_calls=1, conv_width=0.25, thread_candidate=False,
                         batching_clients=4, batching_requests=2, batching_rounds=1, overload_bound=2,
                         overload_clients=6, overload_seconds=1.0, cpu_calls=3, cpu_rounds=1, cpu_frames=None),
    # About 5 minutes on a 2-core machine.
    "quick": BenchConfig(preset="quick", warmup=1, repeats_small=15, repeats_medium=8, repeats_large=3,
                         row_budget_s=8.0, floor_repeats=20, ort_runs=12, requests_small=5, requests_medium=2,
                         cold_starts=1, warm_starts=2, memory_calls=1, concurrency_frames=("1280x720",),
                         candidate_frames=("1280x720", "4096x4096"), cpu_calls=10, cpu_frames=("1280x720",)),
    # 6-15 minutes on a 2-core machine, by its load.
    "full": BenchConfig(preset="full", warmup=3, repeats_small=60, repeats_medium=30, repeats_large=10,
                        row_budget_s=30.0, floor_repeats=60, ort_runs=40, requests_small=20, requests_medium=8,
                        requests_large=2, cold_starts=3, warm_starts=4, memory_runs=2, batching_requests=6,
                        batching_rounds=5, overload_seconds=15.0, cpu_calls=20, cpu_rounds=3),
}


def preset(name: str, **overrides: object) -> BenchConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
