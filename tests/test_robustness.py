"""Hostile and broken input over the wire: every answer is a documented code, and the agent keeps serving."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import edge_agent_pb2 as pb2
from edge_agent.client import OwnedSegment
from tests import model_factory
from tests.conftest import RunningAgent, start_agent

C = grpc.StatusCode
# The spec's status-code table, per RPC (OK included). UNKNOWN and INTERNAL are documented
# too, but nothing a client sends may cause them, so they are left out on purpose.
DOCUMENTED = {
    "DetectAnomalies": {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.RESOURCE_EXHAUSTED, C.FAILED_PRECONDITION},
    "StartModel": {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.RESOURCE_EXHAUSTED, C.FAILED_PRECONDITION},
    "StopModel": {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.FAILED_PRECONDITION},
    "ListModels": {C.OK},
    "DescribeModel": {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND},
}
GOOD_FRAME = model_factory.with_patch(model_factory.grey_frame(64, 64), 8, 8, 16, 16, (255, 0, 0))
NAMES = ["redness-seg", "redness-cls", "colours-seg", "ghost", "", "../redness-seg", "a" * 300, "redness-seg/.."]


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    import shutil
    import tempfile

    models_dir = tmp_path_factory.mktemp("models")
    for name, kind in (("redness-seg", "segmentation"), ("redness-cls", "classification"),
                       ("colours-seg", "multiclass")):
        model_factory.write_component(models_dir, name, kind)
    socket_dir = Path(tempfile.mkdtemp(prefix="ea-"))
    running = start_agent([models_dir], socket_dir)
    running.start_and_wait("redness-seg")
    running.start_and_wait("colours-seg")
    try:
        yield running
    finally:
        running.channel.close()
        running.agent.stop(1.0)
        shutil.rmtree(socket_dir, ignore_errors=True)


def call_raw(agent: RunningAgent, method: str, payload: bytes) -> grpc.StatusCode:
    call = agent.channel.unary_unary(f"/AWS.LookoutVision.EdgeAgent/{method}",
                                     request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        call(payload, timeout=30)
        return C.OK
    except grpc.RpcError as exc:
        return exc.code()


def assert_still_serving(agent: RunningAgent) -> None:
    request = pb2.DetectAnomaliesRequest(
        model_component="redness-seg", bitmap=pb2.Bitmap(width=64, height=64, byte_data=GOOD_FRAME.tobytes()))
    assert agent.stub.DetectAnomalies(request, timeout=30).detect_anomaly_result.is_anomalous


# -- undecodable requests --------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(DOCUMENTED))
def test_invalid_utf8_in_strings_gets_invalid_argument_not_internal(agent: RunningAgent, method: str) -> None:
    if method == "ListModels":
        payload = b"\x0a\x02\xff\xfe"  # an unknown field 1 of type string: ignored, the call succeeds
        assert call_raw(agent, method, payload) is C.OK
        return
    payload = b"\x0a\x04ab\xff\xfe"  # model_component (field 1) holding bytes that are not UTF-8
    with pytest.raises(grpc.RpcError) as info:
        agent.channel.unary_unary(f"/AWS.LookoutVision.EdgeAgent/{method}", request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)(payload, timeout=30)
    assert info.value.code() is C.INVALID_ARGUMENT
    assert "UTF-8" in info.value.details()
    assert_still_serving(agent)


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\x12\x05\x08", b"\x0a\x7f" + b"x" * 3])
def test_truncated_or_garbage_messages_get_invalid_argument(agent: RunningAgent, payload: bytes) -> None:
    assert call_raw(agent, "DetectAnomalies", payload) is C.INVALID_ARGUMENT
    assert_still_serving(agent)


def test_message_over_the_size_limit_is_refused_and_agent_serves_on(agent: RunningAgent) -> None:
    channel = grpc.insecure_channel(agent.address, options=[("grpc.max_send_message_length", 128 << 20)])
    try:
        huge = pb2.DetectAnomaliesRequest(
            model_component="redness-seg", bitmap=pb2.Bitmap(width=4096, height=4096, byte_data=b"\0" * (60 << 20)))
        call = channel.unary_unary("/AWS.LookoutVision.EdgeAgent/DetectAnomalies",
                                   request_serializer=pb2.DetectAnomaliesRequest.SerializeToString,
                                   response_deserializer=pb2.DetectAnomaliesResponse.FromString)
        with pytest.raises(grpc.RpcError) as info:
            call(huge, timeout=60)
        assert info.value.code() is C.RESOURCE_EXHAUSTED
    finally:
        channel.close()
    assert_still_serving(agent)


def test_width_times_height_overflowing_32_bits_is_refused(agent: RunningAgent) -> None:
    request = pb2.DetectAnomaliesRequest(
        model_component="redness-seg", bitmap=pb2.Bitmap(width=2**31 - 1, height=2**31 - 1, byte_data=b"\0" * 12))
    with pytest.raises(grpc.RpcError) as info:
        agent.stub.DetectAnomalies(request)
    assert info.value.code() is C.INVALID_ARGUMENT and "bitmap.width" in info.value.details()


# -- requests generated from the proto's own schema -------------------------------------------------


_SCALARS = {
    FieldDescriptor.TYPE_INT32: st.one_of(st.sampled_from([0, 63, 64, 65, 96, 4096, 4097, -1]),
                                          st.integers(-(2**31), 2**31 - 1)),
    FieldDescriptor.TYPE_UINT64: st.one_of(st.sampled_from([0, 1, 4096, 12288, 2**64 - 1]),
                                           st.integers(0, 2**64 - 1)),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32, allow_nan=True),
}


def _string_for(field: FieldDescriptor, segments: list[str]) -> st.SearchStrategy[str]:
    if field.name == "model_component":
        return st.one_of(st.sampled_from(NAMES), st.text(max_size=40))
    if field.name == "name":  # a shared memory name
        return st.one_of(st.sampled_from(segments + ["", "/", "..", "/../etc/passwd", "a/b", "x" * 300]),
                         st.text(max_size=20))
    return st.text(max_size=20)


def messages(descriptor: Descriptor, segments: list[str], depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of this type: each field absent or holding an adversarial value."""
    message_class = getattr(pb2, descriptor.name)
    fields: dict[str, st.SearchStrategy] = {}  # type: ignore[type-arg]
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth > 3:
                continue
            value = messages(field.message_type, segments, depth + 1)
        elif field.type == FieldDescriptor.TYPE_STRING:
            value = _string_for(field, segments)
        elif field.type == FieldDescriptor.TYPE_BYTES:
            value = st.one_of(st.binary(max_size=64), st.sampled_from([GOOD_FRAME.tobytes(), b"\x80" * (64 * 64 * 4)]))
        elif field.type == FieldDescriptor.TYPE_ENUM:
            value = st.sampled_from([v.number for v in field.enum_type.values])
        else:
            value = _SCALARS[field.type]
        if field.is_repeated:
            value = st.lists(value, max_size=2)
        fields[field.name] = st.one_of(st.none(), value)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = message_class()
        oneof_taken: set[str] = set()
        for name, strategy in fields.items():
            value = draw(strategy)
            if value is None:
                continue
            field = descriptor.fields_by_name[name]
            if field.containing_oneof is not None:
                if field.containing_oneof.name in oneof_taken:
                    continue
                oneof_taken.add(field.containing_oneof.name)
            if field.is_repeated:
                target = getattr(message, name)
                for item in value:
                    if field.type == FieldDescriptor.TYPE_MESSAGE:
                        target.add().CopyFrom(item)
                    else:
                        target.append(item)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(message, name).CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return build()


@pytest.fixture(scope="module")
def segments() -> Iterator[list[str]]:
    """Real segments for the generated handles to name: one holds a good frame, one is tiny."""
    good = OwnedSegment(GOOD_FRAME.nbytes + 4096)
    good.write(GOOD_FRAME)
    tiny = OwnedSegment(10)
    try:
        yield [good.name, good.name.lstrip("/"), tiny.name]
    finally:
        good.close()
        tiny.close()


@pytest.mark.parametrize("method", sorted(DOCUMENTED))
def test_generated_requests_get_documented_codes_and_agent_keeps_serving(
    agent: RunningAgent, segments: list[str], method: str
) -> None:
    service = pb2.DESCRIPTOR.services_by_name["EdgeAgent"]
    descriptor = service.methods_by_name[method].input_type
    response_class = getattr(pb2, service.methods_by_name[method].output_type.name)
    call = agent.channel.unary_unary(f"/AWS.LookoutVision.EdgeAgent/{method}",
                                     request_serializer=lambda m: m.SerializeToString(),
                                     response_deserializer=response_class.FromString)
    seen: set[grpc.StatusCode] = set()

    valid = {
        "DetectAnomalies": pb2.DetectAnomaliesRequest(
            model_component="redness-seg",
            bitmap=pb2.Bitmap(width=64, height=64,
                              shared_memory_handle=pb2.SharedMemoryHandle(name=segments[0], size=GOOD_FRAME.nbytes))),
        "StartModel": pb2.StartModelRequest(model_component="redness-cls"),
        "StopModel": pb2.StopModelRequest(model_component="redness-seg"),
        "ListModels": pb2.ListModelsRequest(),
        "DescribeModel": pb2.DescribeModelRequest(model_component="colours-seg"),
    }[method]

    @settings(max_examples=60 if method == "DetectAnomalies" else 25, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @example(request=valid)
    @given(request=messages(descriptor, segments))
    def check(request: Message) -> None:
        try:
            call(request, timeout=30)
            code = C.OK
        except grpc.RpcError as exc:
            code = exc.code()
            assert exc.details(), "an error without a message"
        seen.add(code)
        assert code in DOCUMENTED[method], (code, request)
        if method == "StopModel" and code is C.OK:  # keep the serving model up for the next examples
            agent.start_and_wait(request.model_component)

    check()
    assert C.OK in seen or method == "ListModels"
    assert len(seen) >= 2 or method == "ListModels", seen  # the generator reaches more than one branch
    for name in ("redness-seg", "colours-seg"):
        state = agent.stub.DescribeModel(pb2.DescribeModelRequest(model_component=name)).model_description.status
        if state != pb2.RUNNING:
            from edge_agent.models import ModelState

            agent.manager.wait_for(name, [ModelState.RUNNING, ModelState.STOPPED, ModelState.FAILED], 30)
            if agent.stub.DescribeModel(pb2.DescribeModelRequest(model_component=name)).model_description.status \
                    != pb2.RUNNING:
                agent.start_and_wait(name)
    assert_still_serving(agent)


def test_shared_memory_name_never_reaches_outside_dev_shm(agent: RunningAgent, tmp_path: Path) -> None:
    secret = tmp_path / f"secret-{secrets.token_hex(3)}"
    secret.write_bytes(GOOD_FRAME.tobytes())
    for name in (str(secret), f"/../..{secret}", f"..{secret}", f"/{secret.name}"):
        request = pb2.DetectAnomaliesRequest(
            model_component="redness-seg",
            bitmap=pb2.Bitmap(width=64, height=64,
                              shared_memory_handle=pb2.SharedMemoryHandle(name=name, size=GOOD_FRAME.nbytes)))
        with pytest.raises(grpc.RpcError) as info:
            agent.stub.DetectAnomalies(request)
        assert info.value.code() is C.INVALID_ARGUMENT


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _score_is_map(directory: Path) -> None:
    import json

    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["outputs"]["image_score"] = "anomaly_map"  # a whole map where one score per image belongs
    (directory / "manifest.json").write_text(json.dumps(manifest))


def _wrong_type(directory: Path) -> None:
    import json

    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["input"]["width"] = "64"
    (directory / "manifest.json").write_text(json.dumps(manifest))


def _wrong_size(directory: Path) -> None:
    import json

    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["input"]["width"] = 128  # the model's input is 64 wide
    (directory / "manifest.json").write_text(json.dumps(manifest))


BROKEN_MODELS = {
    "truncated-onnx": (lambda d: _truncate(d / "model.onnx"), "model.onnx"),
    "not-onnx": (lambda d: (d / "model.onnx").write_text("this is a README, not a model"), "model.onnx"),
    "empty-onnx": (lambda d: (d / "model.onnx").write_bytes(b""), "model.onnx"),
    "score-is-a-map": (_score_is_map, "model.onnx"),
    "manifest-wrong-type": (_wrong_type, "manifest.json"),
    "input-size-mismatch": (_wrong_size, "model.onnx"),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN_MODELS))
def test_broken_model_files_leave_that_model_failed_naming_the_file_and_others_serving(
    models_dir: Path, short_tmp: Path, breakage: str
) -> None:
    from edge_agent.models import ModelState

    damage, culprit = BROKEN_MODELS[breakage]
    damage(models_dir / "redness-cls")
    running = start_agent([models_dir], short_tmp)
    try:
        assert running.start_and_wait("redness-seg").status == pb2.RUNNING
        try:
            running.stub.StartModel(pb2.StartModelRequest(model_component="redness-cls"))
        except grpc.RpcError as exc:  # a manifest broken at discovery is FAILED already; starting retries it
            pytest.fail(f"StartModel on a FAILED component must be allowed: {exc.details()}")
        running.manager.wait_for("redness-cls", [ModelState.FAILED, ModelState.RUNNING], 30)
        description = running.stub.DescribeModel(
            pb2.DescribeModelRequest(model_component="redness-cls")).model_description
        assert description.status == pb2.FAILED
        assert f"redness-cls/{culprit}" in description.status_message, description.status_message
        assert_still_serving(running)
    finally:
        running.channel.close()
        running.agent.stop(1.0)


def test_model_whose_load_crashes_the_runtime_fails_alone(models_dir: Path, tmp_path: Path) -> None:
    from edge_agent.engines import onnxruntime as ort_engine
    from edge_agent.errors import ModelLoadError

    crash = "import os, signal, sys; os.kill(os.getpid(), signal.SIGSEGV)"
    with pytest.raises(ModelLoadError, match=r"killed by SIGSEGV .*keeps serving the other models"):
        ort_engine.probe_in_child(models_dir / "redness-seg" / "model.onnx", code=crash)
    oom = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    with pytest.raises(ModelLoadError, match="OOM killer"):
        ort_engine.probe_in_child(models_dir / "redness-seg" / "model.onnx", code=oom)


def test_load_probe_runs_once_per_file_version_and_real_loads_pass(models_dir: Path, short_tmp: Path) -> None:
    from edge_agent.backends import OnnxRuntimeProvider
    from edge_agent.engines import onnxruntime as ort_engine
    from edge_agent.models import ModelState

    running = start_agent([models_dir], short_tmp, provider=OnnxRuntimeProvider(intra_op_threads=1))
    try:
        assert running.start_and_wait("redness-seg").status == pb2.RUNNING
        path = str((models_dir / "redness-seg" / "model.onnx").resolve())
        assert any(key[0] == path for key in ort_engine._probed)
        # A file that does not load at all fails with the in-process message, not a crash report.
        (models_dir / "redness-cls" / "model.onnx").write_bytes(b"garbage")
        running.stub.StartModel(pb2.StartModelRequest(model_component="redness-cls"))
        running.manager.wait_for("redness-cls", [ModelState.FAILED, ModelState.RUNNING], 60)
        message = running.manager.describe("redness-cls").status_message
        assert "ONNX Runtime cannot load this model" in message
        assert_still_serving(running)
    finally:
        running.channel.close()
        running.agent.stop(1.0)


def test_calls_over_the_agent_limit_get_resource_exhausted_with_advice(models_dir: Path, short_tmp: Path) -> None:
    import threading

    from edge_agent.backends import OnnxRuntimeProvider
    from edge_agent.models import ModelManager
    from edge_agent.server import create_server

    model_factory.write_component(models_dir, "slow", "segmentation")
    model_factory.slow_model(models_dir / "slow" / "model.onnx", repeats=300)
    manager = ModelManager([models_dir], OnnxRuntimeProvider(intra_op_threads=1, isolate_loads=False),
                           max_requests_per_model=2)
    agent = create_server(manager, [f"unix:{short_tmp}/a.sock"], worker_threads=16, max_concurrent_rpcs=4)
    agent.start()
    channel = grpc.insecure_channel(f"unix://{short_tmp}/a.sock")
    try:
        stub = __import__("edge_agent_pb2_grpc").EdgeAgentStub(channel)
        stub.StartModel(pb2.StartModelRequest(model_component="slow"))
        from edge_agent.models import ModelState

        assert manager.wait_for("slow", [ModelState.RUNNING], 60) is ModelState.RUNNING
        request = pb2.DetectAnomaliesRequest(
            model_component="slow", bitmap=pb2.Bitmap(width=64, height=64, byte_data=GOOD_FRAME.tobytes()))
        codes: list[tuple[grpc.StatusCode, str]] = []

        def call() -> None:
            try:
                stub.DetectAnomalies(request, timeout=120)
                codes.append((C.OK, ""))
            except grpc.RpcError as exc:
                codes.append((exc.code(), exc.details()))

        threads = [threading.Thread(target=call) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
        refused = [details for code, details in codes if code is C.RESOURCE_EXHAUSTED]
        assert len(codes) == 8 and {code for code, _ in codes} <= {C.OK, C.RESOURCE_EXHAUSTED}
        assert refused and all("cannot keep up" in d for d in refused), codes
        assert sum(code is C.OK for code, _ in codes) >= 2
        assert stub.DetectAnomalies(request, timeout=120).detect_anomaly_result.is_anomalous
    finally:
        channel.close()
        agent.stop(1.0)
