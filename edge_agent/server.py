"""The gRPC server: the EdgeAgent servicer, its factory, and the serve loop.

Domain errors are raised anywhere; ``STATUS_FOR_ERROR`` below is the one place
where they become gRPC status codes.
"""

from __future__ import annotations

import grp
import logging
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import edge_agent_pb2 as pb2
import edge_agent_pb2_grpc as pb2_grpc
from edge_agent import shm
from edge_agent.config import AgentConfig
from edge_agent.constants import MAX_MESSAGE_BYTES, RGB_BYTES_PER_PIXEL
from edge_agent.errors import (
    BackendUnavailableError,
    EdgeAgentError,
    InferenceError,
    InvalidArgumentError,
    ModelLoadError,
    ModelNotFoundError,
    ResourceExhaustedError,
    WrongStateError,
)
from edge_agent.imaging import Frame, check_size, frame_from_bytes, mask_bytes, segment_stride
from edge_agent.inference import Detection
from edge_agent.metrics import AgentMetrics, start_http
from edge_agent.models import ModelManager, ModelState, validate_component_name

LOGGER = logging.getLogger(__name__)

# The one mapping from domain errors to gRPC status codes (most specific first).
STATUS_FOR_ERROR: tuple[tuple[type[EdgeAgentError], grpc.StatusCode], ...] = (
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (WrongStateError, grpc.StatusCode.FAILED_PRECONDITION),
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (InferenceError, grpc.StatusCode.INTERNAL),
    (ModelLoadError, grpc.StatusCode.INTERNAL),
    (BackendUnavailableError, grpc.StatusCode.INTERNAL),
    (EdgeAgentError, grpc.StatusCode.INTERNAL),
)


def status_for(error: EdgeAgentError) -> grpc.StatusCode:
    for error_type, code in STATUS_FOR_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL


class EdgeAgentServicer(pb2_grpc.EdgeAgentServicer):
    """Implements the five RPCs of the wire contract over a ModelManager."""

    def __init__(self, manager: ModelManager, metrics: AgentMetrics | None = None,
                 max_concurrent_rpcs: int | None = None) -> None:
        self.manager = manager
        self.metrics = metrics
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self._active_lock = threading.Lock()  # guards _active
        self._active = 0

    @contextmanager
    def _rpc(self, name: str, context: grpc.ServicerContext, request: Any = None) -> Iterator[None]:
        code = grpc.StatusCode.OK
        message = ""
        with self._active_lock:
            self._active += 1
            active = self._active
        try:
            if self.max_concurrent_rpcs is not None and active > self.max_concurrent_rpcs:
                raise ResourceExhaustedError(
                    f"The agent is already serving {self.max_concurrent_rpcs} calls, its limit: it cannot keep up "
                    "with the call rate. Retry after a short back-off, send fewer frames at once, or raise "
                    "--max-concurrent-rpcs if the device has capacity to spare."
                )
            if isinstance(request, Undecodable):
                raise InvalidArgumentError(
                    f"the {request.message_type} could not be decoded ({request.reason}). Send a valid message of "
                    "the Edge Agent API; string fields such as model_component must be valid UTF-8."
                )
            yield
        except EdgeAgentError as exc:
            code, message = status_for(exc), str(exc)
            LOGGER.debug("%s -> %s: %s", name, code.name, message)
        except Exception as exc:
            LOGGER.exception("%s: unexpected error", name)
            code = grpc.StatusCode.INTERNAL
            message = f"Internal error in {name}: {type(exc).__name__}: {exc}. See the agent log; retry the call."
        finally:
            with self._active_lock:
                self._active -= 1
        if self.metrics is not None:
            self.metrics.observe_rpc(name, code)
        if code is not grpc.StatusCode.OK:
            context.abort(code, message)

    # -- lifecycle RPCs -------------------------------------------------------------------

    def StartModel(self, request: pb2.StartModelRequest, context: grpc.ServicerContext) -> pb2.StartModelResponse:
        with self._rpc("StartModel", context, request):
            state = self.manager.start(request.model_component)
            return pb2.StartModelResponse(status=int(state))
        raise AssertionError("unreachable")  # context.abort raised

    def StopModel(self, request: pb2.StopModelRequest, context: grpc.ServicerContext) -> pb2.StopModelResponse:
        with self._rpc("StopModel", context, request):
            state = self.manager.stop(request.model_component)
            return pb2.StopModelResponse(status=int(state))
        raise AssertionError("unreachable")

    def ListModels(self, request: pb2.ListModelsRequest, context: grpc.ServicerContext) -> pb2.ListModelsResponse:
        with self._rpc("ListModels", context, request):
            models = [
                pb2.ModelMetadata(model_component=info.name, lookout_vision_model_arn=info.arn,
                                  status=int(info.state), status_message=info.status_message)
                for info in self.manager.list()
            ]
            return pb2.ListModelsResponse(models=models)
        raise AssertionError("unreachable")

    def DescribeModel(
        self, request: pb2.DescribeModelRequest, context: grpc.ServicerContext
    ) -> pb2.DescribeModelResponse:
        with self._rpc("DescribeModel", context, request):
            info = self.manager.describe(request.model_component)
            return pb2.DescribeModelResponse(model_description=pb2.ModelDescription(
                model_component=info.name, lookout_vision_model_arn=info.arn,
                status=int(info.state), status_message=info.status_message))
        raise AssertionError("unreachable")

    # -- inference ------------------------------------------------------------------------

    def DetectAnomalies(
        self, request: pb2.DetectAnomaliesRequest, context: grpc.ServicerContext
    ) -> pb2.DetectAnomaliesResponse:
        with self._rpc("DetectAnomalies", context, request):
            started = time.perf_counter()
            name = validate_component_name(request.model_component)
            mask_segment = _mask_segment(request)
            with self.manager.serving(name) as runner:
                leased = time.perf_counter()
                frame = _frame(request)
                read = time.perf_counter()
                detection = runner.detect(frame)
                answered = time.perf_counter()
                result = _result(detection, frame, mask_segment)
            finished = time.perf_counter()
            times = detection.times
            # Waiting for the model lease counts as queueing; reading the frame as pre-processing;
            # writing the mask and building the reply as post-processing.
            times.queue_s += leased - started
            times.preprocess_s += read - leased
            times.postprocess_s += finished - answered
            LOGGER.debug("DetectAnomalies %s: anomalous=%s confidence=%.4f %.1f ms", name, detection.is_anomalous,
                         detection.confidence, (finished - started) * 1000)
            if self.metrics is not None:
                self.metrics.observe_detection(name, detection.is_anomalous, times, finished - started)
            return pb2.DetectAnomaliesResponse(detect_anomaly_result=result)
        raise AssertionError("unreachable")


def _frame(request: pb2.DetectAnomaliesRequest) -> Frame:
    if not request.HasField("bitmap"):
        raise InvalidArgumentError("bitmap is missing; send the image as bitmap.byte_data or "
                                   "bitmap.shared_memory_handle.")
    bitmap = request.bitmap
    which = bitmap.WhichOneof("data")
    if which == "byte_data":
        return frame_from_bytes(bitmap.width, bitmap.height, bitmap.byte_data)
    if which == "shared_memory_handle":
        handle = bitmap.shared_memory_handle
        field = "bitmap.shared_memory_handle"
        check_size(bitmap.width, bitmap.height)
        segment = shm.check_range(handle.name, handle.offset, handle.size, field)
        return shared_memory_frame(bitmap.width, bitmap.height, segment, field)
    raise InvalidArgumentError(
        "bitmap carries no image: set bitmap.byte_data (packed RGB888) or bitmap.shared_memory_handle."
    )


def shared_memory_frame(width: int, height: int, segment: shm.SegmentRange, field: str) -> Frame:
    """A frame in a client's segment, checked now and read when pre-processing needs it.

    Large frames are then read a block of rows at a time into a reused buffer and reduced as
    they come (profiles showed the whole-frame copy as most of a 4096x4096 call's reading cost).

    Raises:
        InvalidArgumentError: the size fits no RGB888 layout, or the segment is missing or short.
    """
    stride = segment_stride(width, height, segment.size, field)
    shm.check_readable(segment, field)
    return Frame(width, height, stride, None, read=lambda start, out: shm.read_into(segment, start, out, field))


@dataclass(frozen=True)
class _MaskTarget:
    segment: shm.SegmentRange
    handle: pb2.SharedMemoryHandle
    field: str


def _mask_segment(request: pb2.DetectAnomaliesRequest) -> _MaskTarget | None:
    """The client's mask segment, from field 2 or (as some published protos number it) field 3."""
    if not request.HasField("anomaly_mask_params"):
        return None
    params = request.anomaly_mask_params
    for field_name in ("shared_memory_handle", "shared_memory_handle_field3"):
        if params.HasField(field_name):
            handle = getattr(params, field_name)
            field = f"anomaly_mask_params.{'shared_memory_handle'}"
            segment = shm.check_range(handle.name, handle.offset, handle.size, field)
            return _MaskTarget(segment, handle, field)
    return None


def _result(detection: Detection, frame: Frame, target: _MaskTarget | None) -> pb2.DetectAnomalyResult:
    result = pb2.DetectAnomalyResult(is_anomalous=detection.is_anomalous, confidence=detection.confidence)
    if detection.mask is None:
        return result
    for area in detection.anomalies:
        result.anomalies.append(pb2.Anomaly(
            name=area.name, pixel_anomaly=pb2.PixelAnomaly(total_percentage_area=area.fraction,
                                                           hex_color=area.color)))
    mask = result.anomaly_mask
    mask.width, mask.height = frame.width, frame.height
    if target is None:
        mask.byte_data = mask_bytes(detection.mask)
    else:
        needed = frame.width * frame.height * RGB_BYTES_PER_PIXEL
        if target.segment.size < needed:
            raise InvalidArgumentError(
                f"{target.field}.size is {target.segment.size} bytes but the mask needs {needed} "
                f"({frame.width}x{frame.height}x3). Pass a segment and size of at least {needed} bytes."
            )
        shm.write(target.segment, detection.mask, target.field)
        mask.shared_memory_handle.CopyFrom(target.handle)
    return result


# -- server factory and serve loop ---------------------------------------------------------


@dataclass
class AgentServer:
    """A created (not yet started) server and the parts tests reach into."""

    server: grpc.Server
    servicer: EdgeAgentServicer
    health: health.HealthServicer
    manager: ModelManager
    addresses: list[str]

    def start(self) -> None:
        self.server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace_s: float | None = None) -> None:
        """Stops taking work, lets in-flight calls finish within the grace, then stops models."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait()
        self.manager.close()


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request whose bytes are not a valid message (the servicer answers INVALID_ARGUMENT)."""

    message_type: str
    reason: str


def _tolerant(message_class: Any) -> Callable[[bytes], Any]:
    """A deserializer that never raises: gRPC would answer a parse failure with INTERNAL."""

    def deserialize(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except Exception as exc:  # DecodeError, or invalid UTF-8 in a string field
            return Undecodable(message_class.DESCRIPTOR.name, str(exc) or type(exc).__name__)

    return deserialize


def _register(servicer: EdgeAgentServicer, server: grpc.Server) -> None:
    """Registers the five RPCs, as the generated code does, but with tolerant deserializers."""
    service = pb2.DESCRIPTOR.services_by_name["EdgeAgent"]
    handlers = {}
    for method in service.methods:
        request_class = getattr(pb2, method.input_type.name)
        response_class = getattr(pb2, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=_tolerant(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def create_server(
    manager: ModelManager,
    addresses: list[str],
    *,
    worker_threads: int,
    max_concurrent_rpcs: int,
    metrics: AgentMetrics | None = None,
    tls: grpc.ServerCredentials | None = None,
) -> AgentServer:
    """Builds the gRPC server bound to ``addresses`` (``unix:PATH`` or ``HOST:PORT``), not started.

    ``tls`` secures the TCP addresses; the unix socket is protected by its file permissions.

    Raises:
        OSError: when an address cannot be bound.
    """
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        ThreadPoolExecutor(max_workers=worker_threads, thread_name_prefix="rpc"),
        options=options,
        # The servicer refuses calls over the limit with a message that says what to do; gRPC's own
        # (terse) refusal is only a backstop for calls that never reach it.
        maximum_concurrent_rpcs=2 * max_concurrent_rpcs + 16,
    )
    manager.call_threads = worker_threads  # no batch can hold more calls than threads serve them
    servicer = EdgeAgentServicer(manager, metrics, max_concurrent_rpcs)
    _register(servicer, server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    def on_state(name: str, state: ModelState | None, _message: str) -> None:
        if state is None:  # removed from the models directory
            status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        elif state is ModelState.RUNNING:
            status = health_pb2.HealthCheckResponse.SERVING
        else:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        health_servicer.set(name, status)

    manager.add_listener(on_state)
    for address in addresses:
        secure = tls is not None and not address.startswith("unix:")
        try:
            port = server.add_secure_port(address, tls) if secure else server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address}: {exc}") from None
        if port == 0:
            raise OSError(f"cannot listen on {address}: the address is in use or not valid here")
    return AgentServer(server, servicer, health_servicer, manager, list(addresses))


def prepare_socket_path(path: str) -> None:
    """Removes a stale socket left by a killed agent; refuses to steal a live one.

    Raises:
        OSError: with a message saying what to do.
    """
    encoded = os.fsencode(path)
    if len(encoded) >= 108:  # sizeof(sockaddr_un.sun_path) on Linux, with its terminating NUL
        raise OSError(f"socket path {path!r} is {len(encoded)} bytes; unix socket paths must be under 108 bytes. "
                      "Choose a shorter --socket path.")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OSError(f"cannot create socket {path}: directory {directory} does not exist. Create it first.")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OSError(f"cannot create socket {path}: no write permission on {directory}.")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket; remove it or choose another --socket path.")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        LOGGER.info("removing stale socket %s left by an agent that is no longer running", path)
        os.unlink(path)
        return
    except OSError as exc:
        raise OSError(f"cannot check the existing socket {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise OSError(
        f"another agent is already listening on {path}. Stop it first, or start this one with another --socket."
    )


def tcp_address(value: str) -> str:
    """``PORT`` means loopback only; ``HOST:PORT`` (or ``[IPv6]:PORT``) binds where told."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    if not host or not port.isdigit():
        raise OSError(f"--tcp {value!r} is not PORT or HOST:PORT (for example 127.0.0.1:50051).")
    if not 1 <= int(port) <= 65535:
        raise OSError(f"--tcp port {port} is out of range; choose a port from 1 to 65535.")
    return f"{host}:{port}"


def tls_credentials(cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """Server TLS from PEM files; with ``client_ca``, clients must present a certificate it signed.

    Raises:
        OSError: naming the file that cannot be read.
    """
    def read(path: str, what: str) -> bytes:
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise OSError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None

    chain = read(cert, "certificate")
    private_key = read(key, "private key")
    root = read(client_ca, "client CA") if client_ca else None
    for path, data, marker in ((cert, chain, b"CERTIFICATE"), (key, private_key, b"PRIVATE KEY"),
                               (client_ca, root, b"CERTIFICATE")):
        if data is not None and not (b"-----BEGIN " in data and marker in data):
            raise OSError(f"{path} is not a PEM file holding a {marker.decode().lower()} "
                          "(-----BEGIN ... lines); convert it with openssl, or pass the right file.")
    return grpc.ssl_server_credentials([(private_key, chain)], root_certificates=root,
                                       require_client_auth=root is not None)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _abandon(agent: AgentServer, socket_path: str) -> None:
    """Undoes a start that cannot complete: nothing may stay bound to the socket path."""
    agent.server.stop(None)
    _unlink_quietly(socket_path)


def secure_socket(path: str, mode: int, group: str | None) -> None:
    """Gives the socket file its mode (owner and group by default) and, if named, its group.

    Raises:
        OSError: naming the group or the permission problem.
    """
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise OSError(f"socket group {group!r} does not exist; create it (groupadd {group}) or pass another "
                          "--socket-group.") from None
        try:
            os.chown(path, -1, gid)
        except PermissionError:
            raise OSError(f"cannot give socket {path} to group {group!r}: the agent's user must be a member of "
                          "that group (usermod -aG).") from None
    os.chmod(path, mode)


SIGNAL_POLL_S = 0.2  # how often the main thread wakes to run pending signal handlers


def run(config: AgentConfig, manager: ModelManager, *, metrics: AgentMetrics | None = None,
        ready: threading.Event | None = None) -> int:
    """Serves until SIGTERM/SIGINT; returns the process exit code.

    Raises:
        OSError: when the socket (or the metrics port) cannot be used; nothing is left listening.
    """
    socket_path = config.socket_path
    prepare_socket_path(socket_path)
    addresses = [f"unix:{socket_path}"]
    tls = None
    if config.tcp_address:
        addresses.append(tcp_address(config.tcp_address))
        if config.tls_cert and config.tls_key:
            tls = tls_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
        else:
            LOGGER.warning("listening on TCP %s without TLS: anyone who can reach it can use the agent; "
                           "pass --tls-cert and --tls-key", addresses[-1])
    # The socket file is born with the configured mode: no moment where others may connect.
    previous_umask = os.umask(0o777 & ~config.socket_mode)
    try:
        agent = create_server(manager, addresses, worker_threads=config.worker_threads,
                              max_concurrent_rpcs=config.max_concurrent_rpcs, metrics=metrics, tls=tls)
    except OSError:
        _unlink_quietly(socket_path)  # bound before another address failed: ours, and useless now
        raise
    finally:
        os.umask(previous_umask)
    try:
        secure_socket(socket_path, config.socket_mode, config.socket_group)
    except OSError:
        _abandon(agent, socket_path)
        raise
    metrics_server = None
    if metrics is not None and config.metrics_port:
        if not 1 <= config.metrics_port <= 65535:
            _abandon(agent, socket_path)
            raise OSError(f"--metrics-port {config.metrics_port} is out of range; choose 1 to 65535, or 0 to turn "
                          "metrics off.")
        try:
            metrics_server = start_http(metrics.registry, config.metrics_port, config.metrics_address)
        except OSError as exc:
            _abandon(agent, socket_path)
            raise OSError(f"cannot serve metrics on {config.metrics_address}:{config.metrics_port}: "
                          f"{exc.strerror or exc}. Choose another --metrics-port (0 turns metrics off).") from None
        LOGGER.info("metrics on http://%s:%d/metrics", config.metrics_address, config.metrics_port)
    agent.start()
    LOGGER.info("listening on %s", ", ".join(addresses))

    stop_requested = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop_requested.is_set():
            LOGGER.warning("second signal: exiting now, without waiting for calls in flight")
            try:
                os.unlink(socket_path)
            except OSError:
                pass
            os._exit(1)
        LOGGER.info("received %s: shutting down (grace %.0f s)", signal.Signals(signum).name, config.shutdown_grace_s)
        stop_requested.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    if ready is not None:
        ready.set()
    try:
        # Python runs a signal's handler in the main thread, once that thread wakes: the kernel may hand
        # SIGTERM to another thread (gRPC's, ONNX Runtime's), and an untimed wait would then never wake.
        while not stop_requested.wait(SIGNAL_POLL_S):
            pass
    finally:
        # Our handler stays in place while draining, so a second signal exits at once.
        agent.stop(config.shutdown_grace_s)
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        try:
            os.unlink(socket_path)
        except FileNotFoundError:
            pass
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        LOGGER.info("stopped")
    return 0
