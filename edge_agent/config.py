"""The agent's configuration: a dataclass, filled from the command line or the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.bands import MAX_AUTO_THREADS
from edge_agent.bands import MAX_THREADS as MAX_IMAGE_THREADS
from edge_agent.constants import (
    DEFAULT_LOADER_THREADS,
    DEFAULT_MAX_CONCURRENT_RPCS,
    DEFAULT_MAX_REQUESTS_PER_MODEL,
    DEFAULT_METRICS_PORT,
    DEFAULT_SHUTDOWN_GRACE_S,
    DEFAULT_SOCKET_PATH,
    DEFAULT_WORKER_THREADS,
)

ENV_PREFIX = "EDGE_AGENT_"
IMAGE_THREADS_HINT = (f"use 0 (automatic: the usable cores, at most {MAX_AUTO_THREADS}), 1 (no split) or up to "
                      f"{MAX_IMAGE_THREADS} threads")

_SWITCH_VALUES = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
                  "off": False}


def parse_switch(name: str, value: str) -> bool:
    """An on/off environment variable.

    Raises:
        ValueError: naming the variable and the values it takes.
    """
    try:
        return _SWITCH_VALUES[value.strip().lower()]
    except KeyError:
        raise ValueError(f"{name}={value!r} is not on or off; use 1/0, true/false, yes/no or on/off") from None


def default_data_dir() -> Path:
    """Where the agent keeps generated files when nothing else is said (demo models, caches)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edge-agent"


def default_demo_models_dir() -> Path:
    return default_data_dir() / "demo-models"


@dataclass
class AgentConfig:
    """Everything ``edge-agent serve`` can be told.

    Every field can also come from an ``EDGE_AGENT_<FIELD>`` environment
    variable (``models_dirs`` is a ``:``-separated list); the command line wins.
    """

    socket_path: str = DEFAULT_SOCKET_PATH
    tcp_address: str | None = None  # PORT (loopback) or HOST:PORT; off by default
    tls_cert: str | None = None  # PEM certificate chain for the TCP listener
    tls_key: str | None = None
    tls_client_ca: str | None = None  # when set, TCP clients must present a certificate it signed
    models_dirs: list[Path] = field(default_factory=list)
    backend: str = "auto"
    worker_threads: int = DEFAULT_WORKER_THREADS
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS
    loader_threads: int = DEFAULT_LOADER_THREADS
    max_requests_per_model: int = DEFAULT_MAX_REQUESTS_PER_MODEL
    intra_op_threads: int = 0
    ort_spinning: bool = False  # ONNX Runtime's threads keep spin-waiting after each run (its own default)
    image_threads: int = 0  # threads one call's resize and mask use, its own included; 0: min(4, cores)
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S
    socket_mode: int = 0o660  # owner and group may connect, nobody else
    socket_group: str | None = None  # group given the socket, so client users in it can connect
    metrics_port: int = DEFAULT_METRICS_PORT  # 0 turns the HTTP endpoint off
    metrics_address: str = "0.0.0.0"
    log_format: str = "text"  # or "json"
    cache_dir: Path | None = None  # TensorRT engines; None: ~/.cache/edge-agent/engines
    fake_gpu_memory: str | None = None  # e.g. "512MiB": TensorRT on the fake GPU
    prebuild: str = "auto"  # build missing engines when components are discovered: auto|on|off
    memory_headroom_bytes: int = 0  # device memory StartModel leaves free for the rest of the system

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> AgentConfig:
        env = os.environ if environ is None else environ
        config = cls()

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name.upper())
            return value if value else None

        if (value := get("socket_path")) is not None:
            config.socket_path = value
        if (value := get("tcp_address")) is not None:
            config.tcp_address = value
        if (value := get("models_dirs")) is not None:
            config.models_dirs = [Path(p) for p in value.split(":") if p]
        if (value := get("backend")) is not None:
            config.backend = value
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            if (value := get(name)) is not None:
                setattr(config, name, value)
        if (value := get("cache_dir")) is not None:
            config.cache_dir = Path(value)
        if (value := get("fake_gpu_memory")) is not None:
            config.fake_gpu_memory = value
        if (value := get("prebuild")) is not None:
            config.prebuild = value
        if (value := get("memory_headroom_bytes")) is not None:
            from edge_agent.engines.tensorrt import parse_bytes

            config.memory_headroom_bytes = parse_bytes(value)
        if (value := get("ort_spinning")) is not None:
            config.ort_spinning = parse_switch(ENV_PREFIX + "ORT_SPINNING", value)
        if (value := get("socket_group")) is not None:
            config.socket_group = value
        if (value := get("metrics_address")) is not None:
            config.metrics_address = value
        if (value := get("log_format")) is not None:
            config.log_format = value
        for name in ("worker_threads", "max_concurrent_rpcs", "loader_threads", "intra_op_threads", "metrics_port",
                     "max_requests_per_model", "image_threads"):
            if (value := get(name)) is not None:
                try:
                    setattr(config, name, int(value))
                except ValueError:
                    raise ValueError(f"{ENV_PREFIX}{name.upper()}={value!r} is not an integer") from None
        if not 0 <= config.image_threads <= MAX_IMAGE_THREADS:
            raise ValueError(f"{ENV_PREFIX}IMAGE_THREADS={config.image_threads}: {IMAGE_THREADS_HINT}")
        if (value := get("shutdown_grace_s")) is not None:
            try:
                config.shutdown_grace_s = float(value)
            except ValueError:
                raise ValueError(f"{ENV_PREFIX}SHUTDOWN_GRACE_S={value!r} is not a number") from None
        return config
