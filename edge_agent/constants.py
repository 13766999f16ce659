"""Limits, defaults and timeouts in one place, with their units in their names."""

from __future__ import annotations

DEFAULT_SOCKET_PATH = "/tmp/aws.iot.lookoutvision.EdgeAgent.sock"
DEFAULT_SOCKET_ADDRESS = f"unix://{DEFAULT_SOCKET_PATH}"

# Image limits from the wire contract.
MIN_IMAGE_SIDE_PX = 64
MAX_IMAGE_SIDE_PX = 4096
RGB_BYTES_PER_PIXEL = 3

# A 4096x4096 RGB image is 48 MiB inline, and so is its mask; leave room for the envelope.
MAX_MESSAGE_BYTES = MAX_IMAGE_SIDE_PX * MAX_IMAGE_SIDE_PX * RGB_BYTES_PER_PIXEL + 1024 * 1024
# gRPC's default receive limit, which most clients keep.
CLIENT_DEFAULT_RECEIVE_LIMIT_BYTES = 4 * 1024 * 1024

# POSIX shared memory lives here on Linux (what shm_open(3) opens).
SHM_DIR = "/dev/shm"
# NAME_MAX on Linux: the longest file name shm_open accepts.
SHM_NAME_MAX_BYTES = 255

# Model component names: directory names under a models directory.
MAX_COMPONENT_NAME_BYTES = 255
MANIFEST_FILE = "manifest.json"

# Server sizing.
DEFAULT_WORKER_THREADS = 16
DEFAULT_MAX_CONCURRENT_RPCS = 64
DEFAULT_LOADER_THREADS = 2
# Requests in flight on one model beyond which DetectAnomalies answers RESOURCE_EXHAUSTED at once
# instead of queuing without bound (latency stays bounded under overload).
DEFAULT_MAX_REQUESTS_PER_MODEL = 32
DEFAULT_SHUTDOWN_GRACE_S = 10.0
DEFAULT_METRICS_PORT = 9464
# How long a StopModel waits for in-flight requests on that model to finish.
STOP_DRAIN_TIMEOUT_S = 30.0

# Dynamic batching of concurrent DetectAnomalies on a model with a dynamic batch dimension
# (the manifest's "batching" overrides these): the most images per inference, and how long
# the oldest queued request may wait for a batch to fill (0: batch only what already queued).
DEFAULT_MAX_BATCH = 4
MAX_BATCH_LIMIT = 64
DEFAULT_MAX_QUEUE_DELAY_MS = 0.0
MAX_QUEUE_DELAY_LIMIT_MS = 1000.0

# Confidence is a float in (0, 1]; some clients read 0 as "no answer".
MIN_CONFIDENCE = 1e-6
