"""Prometheus metrics: what every model and the GPU are doing, at a glance.

Metric objects are created against an injected registry (tests use a fresh
``CollectorRegistry``). Values that describe the present (model states, memory,
requests in flight, load times) are read at scrape time from the model manager
and the provider's memory query, so they can never go stale or leak series
when models come and go; counters and histograms are updated per request and
their series are removed with the model.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric, StateSetMetricFamily
from prometheus_client.registry import Collector

from edge_agent._version import __version__
from edge_agent.inference import PhaseTimes
from edge_agent.models import BackendProvider, ModelManager, ModelState

LOGGER = logging.getLogger(__name__)

NAMESPACE = "edge_agent"
PHASES = ("queue", "preprocess", "inference", "postprocess")
# From 100 us to 10 s: resolves a sub-millisecond queue wait and a slow CPU model alike.
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                     0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Images per batched inference, up to the manifest's largest allowed batch.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
_STATES = [state.name for state in ModelState]


class _ScrapeTimeCollector(Collector):
    """Model states, memory, requests in flight and load times, read when Prometheus scrapes."""

    def __init__(self, manager: ModelManager, provider: BackendProvider) -> None:
        self.manager = manager
        self.provider = provider

    def collect(self) -> Iterator[Metric]:
        models = self.manager.list()
        states = StateSetMetricFamily(
            f"{NAMESPACE}_model_state", "Lifecycle state of each model component (exactly one state is 1).",
            labels=["model_component"])
        memory = GaugeMetricFamily(
            f"{NAMESPACE}_model_memory_bytes",
            "Memory held by a loaded model (or reserved for a model that is starting), in bytes.",
            labels=["model_component"])
        in_flight = GaugeMetricFamily(
            f"{NAMESPACE}_model_requests_in_flight", "DetectAnomalies calls being served by the model.",
            labels=["model_component"])
        queued = GaugeMetricFamily(
            f"{NAMESPACE}_model_requests_queued",
            "DetectAnomalies calls waiting for a free inference slot on the model's engine.",
            labels=["model_component"])
        load = GaugeMetricFamily(
            f"{NAMESPACE}_model_load_seconds",
            "How long the model's last successful load took, by where it came from "
            "(onnxruntime, engine-built, engine-cache).",
            labels=["model_component", "source"])
        for model in models:
            states.add_metric([model.name], {name: model.state.name == name for name in _STATES})
            memory.add_metric([model.name], model.memory_bytes)
            in_flight.add_metric([model.name], model.in_flight)
            queued.add_metric([model.name], model.queued)
            if model.load_source:
                load.add_metric([model.name, model.load_source], model.load_seconds)
        yield from (states, memory, in_flight, queued, load)

        try:
            info = self.provider.memory_info()
        except Exception:  # a failing query must not break the whole scrape
            LOGGER.exception("device memory query failed during a scrape")
            return
        if info is None:
            return
        what = f"read with {info.source}"
        yield GaugeMetricFamily(f"{NAMESPACE}_gpu_memory_total_bytes", f"Device memory in bytes ({what}).",
                                value=info.total_bytes)
        yield GaugeMetricFamily(f"{NAMESPACE}_gpu_memory_free_bytes",
                                f"Device memory free for new models in bytes ({what}; the figure StartModel "
                                "admission uses).", value=info.free_bytes)
        yield GaugeMetricFamily(f"{NAMESPACE}_gpu_memory_used_bytes",
                                f"Device memory in use in bytes: total minus free ({what}).",
                                value=max(0, info.total_bytes - info.free_bytes))


class AgentMetrics:
    """Every metric family the agent exports, bound to one registry."""

    def __init__(self, registry: CollectorRegistry, manager: ModelManager, provider: BackendProvider,
                 versions: dict[str, str] | None = None) -> None:
        self.registry = registry
        self.requests = Counter(
            f"{NAMESPACE}_requests", "gRPC calls answered, by method and status code.",
            ["rpc", "code"], registry=registry)
        self.latency = Histogram(
            f"{NAMESPACE}_detect_phase_seconds",
            "Time a DetectAnomalies call spent in each phase (queue, preprocess, inference, postprocess).",
            ["model_component", "phase"], buckets=LATENCY_BUCKETS_S, registry=registry)
        self.request_latency = Histogram(
            f"{NAMESPACE}_detect_seconds", "Whole DetectAnomalies calls that made a prediction, in the agent.",
            ["model_component"], buckets=LATENCY_BUCKETS_S, registry=registry)
        self.batch_size = Histogram(
            f"{NAMESPACE}_detect_batch_size",
            "Images in the inference each DetectAnomalies call was part of (1: it ran alone; more: dynamic "
            "batching gathered concurrent calls).",
            ["model_component"], buckets=BATCH_SIZE_BUCKETS, registry=registry)
        self.predictions = Counter(
            f"{NAMESPACE}_predictions", "Predictions made, by result (anomalous or normal).",
            ["model_component", "result"], registry=registry)
        self.info = Info(f"{NAMESPACE}_build", "Agent version, inference backend and runtime versions.",
                         registry=registry)
        self.info.info({"version": __version__, "backend": provider.kind, "python": platform.python_version(),
                        **(versions or {})})
        registry.register(_ScrapeTimeCollector(manager, provider))
        manager.add_listener(self._on_state)

    def observe_rpc(self, rpc: str, code: grpc.StatusCode) -> None:
        self.requests.labels(rpc, code.name).inc()

    def observe_detection(self, model: str, is_anomalous: bool, times: PhaseTimes, total_s: float) -> None:
        for phase, seconds in zip(PHASES, (times.queue_s, times.preprocess_s, times.inference_s,
                                           times.postprocess_s), strict=True):
            self.latency.labels(model, phase).observe(seconds)
        self.request_latency.labels(model).observe(total_s)
        self.batch_size.labels(model).observe(times.batch_size)
        self.predictions.labels(model, "anomalous" if is_anomalous else "normal").inc()

    def _on_state(self, name: str, state: ModelState | None, _message: str) -> None:
        if state is not None:
            return
        # The component left the models directory: drop its per-model series.
        for phase in PHASES:
            _remove(self.latency, name, phase)
        _remove(self.request_latency, name)
        _remove(self.batch_size, name)
        for result in ("anomalous", "normal"):
            _remove(self.predictions, name, result)


def _remove(metric: Any, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass


def start_http(registry: CollectorRegistry, port: int, address: str = "0.0.0.0") -> Any:
    """Serves /metrics on ``address:port``; returns the server (``shutdown()`` stops it)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=address, registry=registry)
    return server
