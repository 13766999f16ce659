"""The wire contract: the shipped descriptors match the spec's tables, field for field.

The expectations below are transcribed by hand from ``shared/spec/edge-agent-api.md``; they are
deliberately not derived from the descriptor under test, so that an accidental renumbering,
retyping or renaming in ``proto/edge-agent.proto`` fails here before it reaches a client.
"""

from __future__ import annotations

import ast
import importlib.resources
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor_pb2 import FieldDescriptorProto as F

import edge_agent_pb2 as pb2
import edge_agent_pb2_grpc as pb2_grpc

REPO = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO / "proto"
PROTO_FILE = PROTO_DIR / "edge-agent.proto"

PACKAGE = "AWS.LookoutVision"
JAVA_PACKAGE = "com.amazonaws.lookoutvision"
SERVICE = "EdgeAgent"

# rpc name -> (request message, response message), from the spec's "RPCs" table.
RPCS = {
    "DetectAnomalies": ("DetectAnomaliesRequest", "DetectAnomaliesResponse"),
    "StartModel": ("StartModelRequest", "StartModelResponse"),
    "StopModel": ("StopModelRequest", "StopModelResponse"),
    "ListModels": ("ListModelsRequest", "ListModelsResponse"),
    "DescribeModel": ("DescribeModelRequest", "DescribeModelResponse"),
}
# The full paths clients call, spelled out rather than built from RPCS.
METHOD_PATHS = {
    "/AWS.LookoutVision.EdgeAgent/DetectAnomalies",
    "/AWS.LookoutVision.EdgeAgent/StartModel",
    "/AWS.LookoutVision.EdgeAgent/StopModel",
    "/AWS.LookoutVision.EdgeAgent/ListModels",
    "/AWS.LookoutVision.EdgeAgent/DescribeModel",
}

MODEL_STATUS = {"STOPPED": 0, "STARTING": 1, "RUNNING": 2, "FAILED": 3, "STOPPING": 4}

# Field kinds: scalar type names, "msg:<Message>" or "enum:<Enum>"; "repeated " prefix for lists.
_SCALARS = {
    "string": F.TYPE_STRING,
    "uint64": F.TYPE_UINT64,
    "int32": F.TYPE_INT32,
    "bytes": F.TYPE_BYTES,
    "float": F.TYPE_FLOAT,
    "bool": F.TYPE_BOOL,
}
_MODEL_FIELDS = {
    "model_component": (1, "string"),
    "lookout_vision_model_arn": (2, "string"),
    "status": (3, "enum:ModelStatus"),
    "status_message": (4, "string"),
}
# message -> {field name: (number, kind)}, from the spec's "Messages" table, plus the one
# deliberate addition: AnomalyMaskParams field 3 for the copies of the proto that number the handle 3.
MESSAGES: dict[str, dict[str, tuple[int, str]]] = {
    "SharedMemoryHandle": {"name": (1, "string"), "size": (2, "uint64"), "offset": (3, "uint64")},
    "Bitmap": {
        "width": (1, "int32"),
        "height": (2, "int32"),
        "byte_data": (3, "bytes"),
        "shared_memory_handle": (4, "msg:SharedMemoryHandle"),
    },
    "AnomalyMaskParams": {
        "shared_memory_handle": (2, "msg:SharedMemoryHandle"),
        "shared_memory_handle_field3": (3, "msg:SharedMemoryHandle"),
    },
    "PixelAnomaly": {"total_percentage_area": (1, "float"), "hex_color": (2, "string")},
    "Anomaly": {"name": (1, "string"), "pixel_anomaly": (2, "msg:PixelAnomaly")},
    "DetectAnomaliesRequest": {
        "model_component": (1, "string"),
        "bitmap": (2, "msg:Bitmap"),
        "anomaly_mask_params": (3, "msg:AnomalyMaskParams"),
    },
    "DetectAnomalyResult": {
        "is_anomalous": (1, "bool"),
        "confidence": (2, "float"),
        "anomaly_mask": (3, "msg:Bitmap"),
        "anomalies": (4, "repeated msg:Anomaly"),
    },
    "DetectAnomaliesResponse": {"detect_anomaly_result": (1, "msg:DetectAnomalyResult")},
    "ModelDescription": dict(_MODEL_FIELDS),
    "ModelMetadata": dict(_MODEL_FIELDS),
    "StartModelRequest": {"model_component": (1, "string")},
    "StartModelResponse": {"status": (1, "enum:ModelStatus")},
    "StopModelRequest": {"model_component": (1, "string")},
    "StopModelResponse": {"status": (1, "enum:ModelStatus")},
    "ListModelsRequest": {},
    "ListModelsResponse": {"models": (1, "repeated msg:ModelMetadata")},
    "DescribeModelRequest": {"model_component": (1, "string")},
    "DescribeModelResponse": {"model_description": (1, "msg:ModelDescription")},
}
# message -> {oneof name: field names}
ONEOFS = {"Bitmap": {"data": {"byte_data", "shared_memory_handle"}}}


def _file_proto() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    pb2.DESCRIPTOR.CopyToProto(proto)
    return proto


def _messages() -> dict[str, descriptor_pb2.DescriptorProto]:
    return {m.name: m for m in _file_proto().message_type}


def _describe(field: descriptor_pb2.FieldDescriptorProto) -> tuple[int, str]:
    """(number, kind) in the notation of MESSAGES."""
    prefix = "repeated " if field.label == F.LABEL_REPEATED else ""
    if field.type == F.TYPE_MESSAGE:
        kind = "msg:" + field.type_name.removeprefix(f".{PACKAGE}.")
    elif field.type == F.TYPE_ENUM:
        kind = "enum:" + field.type_name.removeprefix(f".{PACKAGE}.")
    else:
        names = {v: k for k, v in _SCALARS.items()}
        kind = names.get(field.type, f"type{field.type}")
    return field.number, prefix + kind


# -- names ---------------------------------------------------------------------------------


def test_file_declares_package_and_java_package_when_loaded() -> None:
    proto = _file_proto()
    assert proto.package == PACKAGE
    assert proto.syntax == "proto3"
    assert proto.options.java_package == JAVA_PACKAGE
    assert pb2.DESCRIPTOR.package == PACKAGE
    assert pb2.DESCRIPTOR.name == "edge-agent.proto"
    assert list(proto.dependency) == [], "the contract imports no other .proto file"


def test_service_has_exactly_the_five_rpcs_when_read_from_descriptor() -> None:
    services = {s.name: s for s in _file_proto().service}
    assert set(services) == {SERVICE}
    methods = {m.name: m for m in services[SERVICE].method}
    assert set(methods) == set(RPCS)
    for name, (request, response) in RPCS.items():
        method = methods[name]
        assert method.input_type == f".{PACKAGE}.{request}", name
        assert method.output_type == f".{PACKAGE}.{response}", name
        assert not method.client_streaming and not method.server_streaming, name


def test_service_full_names_match_method_paths_when_joined() -> None:
    service = pb2.DESCRIPTOR.services_by_name[SERVICE]
    assert service.full_name == f"{PACKAGE}.{SERVICE}"
    paths = {f"/{service.full_name}/{m.name}" for m in service.methods}
    assert paths == METHOD_PATHS


class _RecordingChannel:
    """Records what the generated stub asks a channel for, instead of calling anything."""

    def __init__(self) -> None:
        self.calls: dict[str, tuple[object, object]] = {}

    def unary_unary(self, path: str, request_serializer: object = None, response_deserializer: object = None,
                    **_: object) -> object:
        self.calls[path] = (request_serializer, response_deserializer)
        return lambda *args, **kwargs: None

    def _unexpected(self, path: str, *args: object, **kwargs: object) -> object:
        raise AssertionError(f"{path} must be a unary-unary rpc")

    unary_stream = stream_unary = stream_stream = _unexpected


def test_stub_calls_the_contract_paths_when_built_on_a_channel() -> None:
    channel = _RecordingChannel()
    pb2_grpc.EdgeAgentStub(channel)
    assert set(channel.calls) == METHOD_PATHS
    for name, (request, response) in RPCS.items():
        serializer, deserializer = channel.calls[f"/{PACKAGE}.{SERVICE}/{name}"]
        request_class = getattr(pb2, request)
        response_class = getattr(pb2, response)
        assert serializer == request_class.SerializeToString, name
        assert deserializer == response_class.FromString, name


# -- enum ----------------------------------------------------------------------------------


def test_model_status_has_spec_names_and_numbers_when_read_from_descriptor() -> None:
    enums = {e.name: e for e in _file_proto().enum_type}
    assert set(enums) == {"ModelStatus"}
    values = {v.name: v.number for v in enums["ModelStatus"].value}
    assert values == MODEL_STATUS


@pytest.mark.parametrize(("name", "number"), sorted(MODEL_STATUS.items()))
def test_model_status_value_is_exported_at_module_level_when_imported(name: str, number: int) -> None:
    assert getattr(pb2, name) == number
    assert pb2.ModelStatus.Value(name) == number


def test_running_equals_two_when_imported_as_clients_do() -> None:
    assert pb2.RUNNING == 2


# -- messages ------------------------------------------------------------------------------


def test_file_declares_exactly_the_spec_messages_when_loaded() -> None:
    assert set(_messages()) == set(MESSAGES)


@pytest.mark.parametrize("message", sorted(MESSAGES))
def test_message_fields_match_spec_when_read_from_descriptor(message: str) -> None:
    proto = _messages()[message]
    actual = {f.name: _describe(f) for f in proto.field}
    assert actual == MESSAGES[message]
    assert not proto.nested_type and not proto.enum_type and not proto.extension
    assert not any(f.proto3_optional for f in proto.field), "proto3 'optional' changes presence semantics"
    oneofs = {
        decl.name: {f.name for f in proto.field if f.HasField("oneof_index") and f.oneof_index == index}
        for index, decl in enumerate(proto.oneof_decl)
    }
    assert oneofs == ONEOFS.get(message, {})


@pytest.mark.parametrize("message", sorted(MESSAGES))
def test_message_class_is_exported_under_spec_name_when_imported(message: str) -> None:
    cls = getattr(pb2, message)
    assert cls.DESCRIPTOR.full_name == f"{PACKAGE}.{message}"


def test_anomaly_mask_params_leaves_field_one_unused_when_read_from_descriptor() -> None:
    numbers = {f.number for f in _messages()["AnomalyMaskParams"].field}
    assert 1 not in numbers
    assert numbers == {2, 3}


def test_bitmap_oneof_switches_between_bytes_and_handle_when_set() -> None:
    bitmap = pb2.Bitmap(width=64, height=64, byte_data=b"\x00")
    assert bitmap.WhichOneof("data") == "byte_data"
    bitmap.shared_memory_handle.name = "/frame"
    assert bitmap.WhichOneof("data") == "shared_memory_handle"
    assert bitmap.byte_data == b""


# -- committed stubs in sync with the .proto ---------------------------------------------------


def _serialized_file_from_generated(path: Path) -> bytes:
    """The bytes literal the generated module hands to ``AddSerializedFile``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "AddSerializedFile"):
            (arg,) = node.args
            assert isinstance(arg, ast.Constant) and isinstance(arg.value, bytes)
            return arg.value
    raise AssertionError(f"{path} does not call AddSerializedFile")


def _method_paths_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value.startswith(f"/{PACKAGE}.")}


@pytest.fixture(scope="module")
def fresh_stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("grpc_tools")
    out = tmp_path_factory.mktemp("stubs")
    include = importlib.resources.files("grpc_tools") / "_proto"
    result = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{include}",
         f"--python_out={out}", f"--grpc_python_out={out}", str(PROTO_FILE)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    return out


def test_committed_pb2_matches_proto_when_regenerated(fresh_stubs: Path) -> None:
    fresh = descriptor_pb2.FileDescriptorProto.FromString(
        _serialized_file_from_generated(fresh_stubs / "edge_agent_pb2.py"))
    committed = descriptor_pb2.FileDescriptorProto.FromString(
        _serialized_file_from_generated(PROTO_DIR / "edge_agent_pb2.py"))
    assert committed == fresh, (
        "proto/edge_agent_pb2.py is stale: regenerate it from proto/edge-agent.proto with grpc_tools.protoc"
    )
    # And the module actually imported is that committed file.
    assert descriptor_pb2.FileDescriptorProto.FromString(pb2.DESCRIPTOR.serialized_pb) == committed


def test_committed_grpc_stub_matches_proto_when_regenerated(fresh_stubs: Path) -> None:
    fresh = _method_paths_in(fresh_stubs / "edge_agent_pb2_grpc.py")
    committed = _method_paths_in(PROTO_DIR / "edge_agent_pb2_grpc.py")
    assert fresh == committed == METHOD_PATHS


# -- the mask handle in field 2 or field 3 ------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _len_field(number: int, payload: bytes) -> bytes:
    return _tag(number, 2) + _varint(len(payload)) + payload


def _uint_field(number: int, value: int) -> bytes:
    return _tag(number, 0) + _varint(value)


def _handle_bytes(name: str, size: int, offset: int) -> bytes:
    return _len_field(1, name.encode()) + _uint_field(2, size) + _uint_field(3, offset)


def test_mask_handle_decodes_into_field3_attribute_when_hand_encoded_as_field_three() -> None:
    params = _len_field(3, _handle_bytes("/mask", 12288, 4096))
    wire = _len_field(1, b"redness-seg") + _len_field(3, params)

    request = pb2.DetectAnomaliesRequest.FromString(wire)

    mask = request.anomaly_mask_params
    assert mask.HasField("shared_memory_handle_field3")
    assert not mask.HasField("shared_memory_handle")
    assert (mask.shared_memory_handle_field3.name, mask.shared_memory_handle_field3.size,
            mask.shared_memory_handle_field3.offset) == ("/mask", 12288, 4096)
    assert request.model_component == "redness-seg"


def test_mask_handle_decodes_into_shared_memory_handle_when_hand_encoded_as_field_two() -> None:
    params = _len_field(2, _handle_bytes("mask", 100, 0))
    request = pb2.DetectAnomaliesRequest.FromString(_len_field(3, params))
    mask = request.anomaly_mask_params
    assert mask.HasField("shared_memory_handle")
    assert not mask.HasField("shared_memory_handle_field3")
    assert mask.shared_memory_handle.name == "mask"
    assert mask.shared_memory_handle.size == 100


def test_our_encoding_of_shared_memory_handle_uses_field_two_when_serialized() -> None:
    request = pb2.DetectAnomaliesRequest(
        anomaly_mask_params=pb2.AnomalyMaskParams(
            shared_memory_handle=pb2.SharedMemoryHandle(name="m", size=3)))
    expected = _len_field(3, _len_field(2, _len_field(1, b"m") + _uint_field(2, 3)))
    assert request.SerializeToString() == expected


def _client_request_class(handle_number: int) -> type:
    """DetectAnomaliesRequest as a client's own copy of the proto declares it.

    The client's AnomalyMaskParams has a single ``shared_memory_handle`` numbered ``handle_number``
    (2 in the original Edge Agent proto, 3 in some AWS sample repositories).
    """
    pool = descriptor_pool.DescriptorPool()
    file = descriptor_pb2.FileDescriptorProto(name=f"client_{handle_number}.proto", package=PACKAGE,
                                              syntax="proto3")
    handle = file.message_type.add(name="SharedMemoryHandle")
    handle.field.add(name="name", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    handle.field.add(name="size", number=2, type=F.TYPE_UINT64, label=F.LABEL_OPTIONAL)
    handle.field.add(name="offset", number=3, type=F.TYPE_UINT64, label=F.LABEL_OPTIONAL)
    params = file.message_type.add(name="AnomalyMaskParams")
    params.field.add(name="shared_memory_handle", number=handle_number, type=F.TYPE_MESSAGE,
                     label=F.LABEL_OPTIONAL, type_name=f".{PACKAGE}.SharedMemoryHandle")
    request = file.message_type.add(name="DetectAnomaliesRequest")
    request.field.add(name="model_component", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    request.field.add(name="anomaly_mask_params", number=3, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                      type_name=f".{PACKAGE}.AnomalyMaskParams")
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.DetectAnomaliesRequest"))


def test_sample_client_request_decodes_into_field3_attribute_when_client_numbers_handle_three() -> None:
    client_class = _client_request_class(3)
    sent = client_class(model_component="m")
    sent.anomaly_mask_params.shared_memory_handle.name = "/sample-mask"
    sent.anomaly_mask_params.shared_memory_handle.size = 49152
    sent.anomaly_mask_params.shared_memory_handle.offset = 8

    received = pb2.DetectAnomaliesRequest.FromString(sent.SerializeToString())

    params = received.anomaly_mask_params
    assert not params.HasField("shared_memory_handle")
    expected = pb2.SharedMemoryHandle(name="/sample-mask", size=49152, offset=8)
    assert params.shared_memory_handle_field3 == expected


def test_old_style_client_request_decodes_into_shared_memory_handle_when_client_numbers_handle_two() -> None:
    client_class = _client_request_class(2)
    sent = client_class(model_component="m")
    sent.anomaly_mask_params.shared_memory_handle.name = "/edge-mask"
    sent.anomaly_mask_params.shared_memory_handle.size = 12288

    received = pb2.DetectAnomaliesRequest.FromString(sent.SerializeToString())

    params = received.anomaly_mask_params
    assert not params.HasField("shared_memory_handle_field3")
    assert params.shared_memory_handle == pb2.SharedMemoryHandle(name="/edge-mask", size=12288)
