"""Manifest parsing: good manifests get their defaults, bad ones name the file and the field."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.errors import ManifestError, ModelLoadError
from edge_agent.manifest import (
    BACKGROUND_COLOR,
    BACKGROUND_NAME,
    AnomalyType,
    Manifest,
    Threshold,
    load_manifest,
    parse_manifest,
)
from tests import model_factory

COMPONENT = Path("/models/widget")
MANIFEST_PATH = str(COMPONENT / "manifest.json")


def _minimal() -> dict[str, Any]:
    """The smallest valid manifest: a classification model with every optional field left out."""
    return {
        "model_file": "model.onnx",
        "input": {"width": 224, "height": 192},
        "outputs": {"image_score": "score"},
        "decision": {"image": {"threshold": 0.5}},
    }


def _segmentation() -> dict[str, Any]:
    return model_factory.base_manifest(64)


def _multiclass() -> dict[str, Any]:
    data = _minimal()
    data["outputs"] = {"image_score": "score", "segmentation": "classes"}
    data["anomaly_types"] = [{"name": "scratch", "color": "#ff0000"}, {"name": "dent", "color": "#00c000"}]
    return data


def _error(data: Any) -> str:
    with pytest.raises(ManifestError) as info:
        parse_manifest(COMPONENT, data)
    return str(info.value)


def _assert_names(message: str, field: str) -> None:
    assert MANIFEST_PATH in message, message
    assert field in message, message


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``data`` with the dotted key set (or deleted when value is _DELETE)."""
    out = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    node = out
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return out


_DELETE = object()


# -- good manifests -----------------------------------------------------------------------------


def test_parse_fills_defaults_when_optional_fields_are_absent() -> None:
    manifest = parse_manifest(COMPONENT, _minimal())

    assert isinstance(manifest, Manifest)
    assert manifest.component_dir == COMPONENT
    assert manifest.manifest_path == COMPONENT / "manifest.json"
    assert manifest.model_file == COMPONENT / "model.onnx"
    spec = manifest.input
    assert (spec.width, spec.height) == (224, 192)
    assert spec.name is None
    assert spec.layout == "NCHW"
    assert spec.dtype == "float32"
    assert spec.channel_order == "RGB"
    assert spec.scale == pytest.approx(1 / 255)
    assert spec.mean == (0.0, 0.0, 0.0)
    assert spec.std == (1.0, 1.0, 1.0)
    assert spec.resize == "bilinear"
    assert manifest.outputs.image_score == "score"
    assert manifest.outputs.anomaly_map is None
    assert manifest.outputs.segmentation is None
    assert manifest.outputs.segmentation_kind == "scores"
    assert manifest.image_threshold == Threshold(0.5)
    assert manifest.pixel_threshold is None
    assert manifest.anomaly_types == ()
    assert manifest.lookout_vision_model_arn == ""
    assert manifest.description == ""
    assert manifest.memory_bytes is None
    assert manifest.extra == {}
    assert not manifest.is_segmentation


def test_parse_keeps_every_given_value_when_all_fields_are_set() -> None:
    data = _segmentation()
    data["input"].update({"layout": "NHWC", "dtype": "uint8", "channel_order": "BGR", "scale": 2,
                          "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": "area"})
    data["decision"]["pixel"] = {"threshold": 0.3, "min": 0, "max": 2}
    data.update({"description": "widgets", "memory_bytes": 1 << 30, "trained_on": "2024-01-01"})

    manifest = parse_manifest(COMPONENT, data)

    spec = manifest.input
    assert spec.name == "image"
    assert (spec.layout, spec.dtype, spec.channel_order, spec.resize) == ("NHWC", "uint8", "BGR", "area")
    assert spec.scale == 2.0 and isinstance(spec.scale, float)
    assert spec.mean == (0.485, 0.456, 0.406)
    assert spec.std == (0.229, 0.224, 0.225)
    assert manifest.outputs.anomaly_map == "anomaly_map"
    assert manifest.image_threshold == Threshold(0.5, -0.5, 1.0)
    assert manifest.pixel_threshold == Threshold(0.3, 0.0, 2.0)
    assert manifest.anomaly_types == (AnomalyType("redness", "#FF0000"),)
    assert manifest.lookout_vision_model_arn.startswith("arn:aws:lookoutvision:")
    assert manifest.description == "widgets"
    assert manifest.memory_bytes == 1 << 30
    assert manifest.extra == {"trained_on": "2024-01-01"}
    assert manifest.is_segmentation


def test_parse_upper_cases_colours_when_given_in_lower_case() -> None:
    manifest = parse_manifest(COMPONENT, _multiclass())
    assert manifest.anomaly_types == (AnomalyType("scratch", "#FF0000"), AnomalyType("dent", "#00C000"))
    assert manifest.outputs.segmentation == "classes"
    assert manifest.is_segmentation


def test_parse_accepts_model_file_in_a_subdirectory_when_it_stays_inside() -> None:
    manifest = parse_manifest(COMPONENT, _set(_minimal(), "model_file", "onnx/model.onnx"))
    assert manifest.model_file == COMPONENT / "onnx" / "model.onnx"


def test_load_reads_the_component_manifest_when_the_file_exists(tmp_path: Path) -> None:
    directory = model_factory.write_component(tmp_path, "redness-seg", "segmentation")
    manifest = load_manifest(directory)
    assert manifest.model_file == directory / "model.onnx"
    assert manifest.model_file.is_file()
    assert manifest.anomaly_types == (AnomalyType("redness", "#FF0000"),)


def test_manifest_error_is_a_model_load_error_when_caught_by_the_lifecycle() -> None:
    assert issubclass(ManifestError, ModelLoadError)


# -- missing required fields ------------------------------------------------------------------


@pytest.mark.parametrize("field", [
    "model_file", "input", "input.width", "input.height", "outputs", "outputs.image_score",
    "decision", "decision.image", "decision.image.threshold",
])
def test_parse_names_the_missing_field_when_a_required_field_is_absent(field: str) -> None:
    message = _error(_set(_minimal(), field, _DELETE))
    _assert_names(message, repr(field))
    assert "missing" in message


def test_parse_treats_null_as_missing_when_a_required_field_is_null() -> None:
    message = _error(_set(_minimal(), "input.width", None))
    _assert_names(message, "'input.width'")
    assert "missing" in message


@pytest.mark.parametrize("data", [[], "manifest", 3, None])
def test_parse_rejects_the_document_when_it_is_not_an_object(data: Any) -> None:
    message = _error(data)
    _assert_names(message, "(top level)")
    assert "JSON object" in message


# -- wrong types ----------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("input.width", "224", "must be an integer"),
    ("input.width", True, "must be an integer"),
    ("input.height", 192.0, "must be an integer"),
    ("input.height", 0, "must be an integer >= 1"),
    ("input.width", -3, "must be an integer >= 1"),
    ("model_file", 7, "must be a string"),
    ("input.name", ["image"], "must be a string"),
    ("outputs.image_score", {"name": "score"}, "must be a string"),
    ("decision.image.threshold", "0.5", "must be a finite number"),
    ("decision.image.threshold", "nan", "must be a finite number"),
    ("decision.image.threshold", "Infinity", "must be a finite number"),
    ("decision.image.threshold", False, "must be a finite number"),
    ("decision.image.min", "0", "must be a finite number"),
    ("input.scale", "1/255", "must be a finite number"),
    ("input.scale", 0, "must be greater than 0"),
    ("input.scale", -1.0, "must be greater than 0"),
    ("input.mean", [0, 0], "must be a list of 3 numbers"),
    ("input.mean", [0, "0", 0], "must be a list of 3 numbers"),
    ("input.mean", [0, True, 0], "must be a list of 3 numbers"),
    ("input.mean", "0,0,0", "must be a list of 3 numbers"),
    ("input.std", [1, 0, 1], "must be a list of 3 positive numbers"),
    ("input.std", [1, -1, 1], "must be a list of 3 positive numbers"),
    ("input", "224x224", "must be a JSON object"),
    ("decision.image", 0.5, "must be a JSON object"),
    ("lookout_vision_model_arn", 12, "must be a string"),
    ("description", ["x"], "must be a string"),
    ("memory_bytes", "1G", "must be an integer"),
    ("memory_bytes", 0, "must be an integer >= 1"),
])
def test_parse_names_the_field_when_its_value_has_the_wrong_type(field: str, value: Any,
                                                                 expected: str) -> None:
    message = _error(_set(_minimal(), field, value))
    _assert_names(message, repr(field))
    assert expected in message
    assert repr(value)[:20] in message, "the message shows the offending value"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_load_rejects_non_finite_numbers_when_python_json_accepts_them(tmp_path: Path, literal: str) -> None:
    # Python's json module reads NaN and Infinity although JSON has no such numbers.
    text = json.dumps(_minimal()).replace('"threshold": 0.5', f'"threshold": {literal}')
    assert literal in text
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ManifestError, match=r"'decision\.image\.threshold' must be a finite number") as info:
        load_manifest(tmp_path)
    assert str(tmp_path / "manifest.json") in str(info.value)


def test_parse_rejects_non_finite_mean_when_python_json_reads_nan() -> None:
    message = _error(_set(_minimal(), "input.mean", [0.0, math.nan, 0.0]))
    _assert_names(message, "'input.mean'")


# -- bad enum choices ------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value", "choices"), [
    ("input.layout", "CHW", "NCHW, NHWC"),
    ("input.layout", "nchw", "NCHW, NHWC"),
    ("input.dtype", "float64", "float32, float16, uint8"),
    ("input.dtype", "int8", "float32, float16, uint8"),
    ("input.resize", "lanczos", "bilinear, area, nearest, bicubic"),
    ("input.channel_order", "RGBA", "RGB, BGR"),
    ("outputs.segmentation_kind", "logits", "scores, labels"),
])
def test_parse_lists_the_choices_when_an_enum_value_is_unknown(field: str, value: str, choices: str) -> None:
    message = _error(_set(_minimal(), field, value))
    _assert_names(message, repr(field))
    assert f"must be one of {choices}" in message
    assert repr(value) in message


# -- anomaly types --------------------------------------------------------------------------------


@pytest.mark.parametrize("color", ["#F00", "FF0000", "#FF00001", "#GG0000", "red", "#ff 000", ""])
def test_parse_rejects_the_colour_when_it_is_not_hash_rrggbb(color: str) -> None:
    data = _multiclass()
    data["anomaly_types"][1]["color"] = color
    message = _error(data)
    _assert_names(message, "'anomaly_types[1].color'")
    assert "#RRGGBB" in message


@pytest.mark.parametrize("color", ["#FFFFFF", "#ffffff", "#FfFfFf"])
def test_parse_rejects_the_background_colour_when_an_anomaly_type_reuses_it(color: str) -> None:
    data = _multiclass()
    data["anomaly_types"][0]["color"] = color
    message = _error(data)
    _assert_names(message, "'anomaly_types[0].color'")
    assert BACKGROUND_COLOR in message


@pytest.mark.parametrize("name", [BACKGROUND_NAME, ""])
def test_parse_rejects_the_name_when_it_is_background_or_empty(name: str) -> None:
    data = _multiclass()
    data["anomaly_types"][1]["name"] = name
    message = _error(data)
    _assert_names(message, "'anomaly_types[1].name'")
    assert repr(BACKGROUND_NAME) in message


def test_parse_rejects_the_list_when_two_types_share_a_name() -> None:
    data = _multiclass()
    data["anomaly_types"][1]["name"] = "scratch"
    message = _error(data)
    _assert_names(message, "'anomaly_types'")
    assert "twice" in message
    assert "scratch" in message


@pytest.mark.parametrize(("value", "field"), [
    ({"name": "scratch"}, "anomaly_types"),
    ([{"name": "scratch"}], "'anomaly_types[0].color'"),
    ([{"color": "#FF0000"}], "'anomaly_types[0].name'"),
    (["scratch"], "anomaly_types[0]"),
    ([{"name": 3, "color": "#FF0000"}], "'anomaly_types[0].name'"),
])
def test_parse_names_the_entry_when_anomaly_types_is_malformed(value: Any, field: str) -> None:
    message = _error(_set(_multiclass(), "anomaly_types", value))
    _assert_names(message, field)


# -- output consistency ---------------------------------------------------------------------------


def test_parse_requires_pixel_threshold_when_anomaly_map_is_set() -> None:
    message = _error(_set(_segmentation(), "decision.pixel", _DELETE))
    _assert_names(message, "outputs.anomaly_map")
    assert "decision.pixel" in message


@pytest.mark.parametrize("types", [
    [],
    [{"name": "scratch", "color": "#FF0000"}, {"name": "dent", "color": "#00FF00"}],
])
def test_parse_requires_exactly_one_type_when_anomaly_map_is_set(types: list[dict[str, str]]) -> None:
    message = _error(_set(_segmentation(), "anomaly_types", types))
    _assert_names(message, "anomaly_types")
    assert f"lists {len(types)}" in message


def test_parse_requires_one_type_when_anomaly_map_is_set_and_anomaly_types_absent() -> None:
    message = _error(_set(_segmentation(), "anomaly_types", _DELETE))
    _assert_names(message, "anomaly_types")


def test_parse_rejects_both_outputs_when_anomaly_map_and_segmentation_are_set() -> None:
    message = _error(_set(_segmentation(), "outputs.segmentation", "classes"))
    _assert_names(message, "outputs.anomaly_map")
    assert "outputs.segmentation" in message


def test_parse_requires_anomaly_types_when_segmentation_is_set() -> None:
    message = _error(_set(_multiclass(), "anomaly_types", []))
    _assert_names(message, "outputs.segmentation")
    assert "anomaly_types" in message


# -- thresholds -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "absent"), [("min", "max"), ("max", "min")])
def test_parse_requires_min_and_max_together_when_only_one_is_given(given: str, absent: str) -> None:
    data = _set(_minimal(), f"decision.image.{given}", 1.0)
    message = _error(data)
    _assert_names(message, "decision.image.min")
    assert "decision.image.max" in message
    assert "together" in message


def test_parse_names_the_pixel_threshold_when_its_min_lacks_a_max() -> None:
    data = _set(_segmentation(), "decision.pixel.min", 0.0)
    message = _error(data)
    _assert_names(message, "decision.pixel.min")


@pytest.mark.parametrize(("low", "high"), [(1.0, 1.0), (2.0, 1.0), (0, -0.5)])
def test_parse_rejects_max_when_it_is_not_greater_than_min(low: float, high: float) -> None:
    data = _set(_set(_minimal(), "decision.image.min", low), "decision.image.max", high)
    message = _error(data)
    _assert_names(message, "'decision.image.max'")
    assert "greater than min" in message


# -- model_file -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../model.onnx", "sub/../../model.onnx", "..", "/opt/models/model.onnx",
                                  "", "  "])
def test_parse_rejects_model_file_when_it_leaves_the_component_directory(name: str) -> None:
    message = _error(_set(_minimal(), "model_file", name))
    _assert_names(message, "'model_file'")
    assert "inside the component directory" in message


# -- files ----------------------------------------------------------------------------------------


def test_load_names_line_and_column_when_the_json_is_invalid(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{\n  "model_file": "model.onnx",\n  "input": {,}\n}\n')
    with pytest.raises(ManifestError, match=r"not valid JSON \(line 3, column 13") as info:
        load_manifest(tmp_path)
    assert str(tmp_path / "manifest.json") in str(info.value)


def test_load_names_the_path_when_the_manifest_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest") as info:
        load_manifest(tmp_path)
    assert str(tmp_path / "manifest.json") in str(info.value)


def test_load_names_the_path_when_the_manifest_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_bytes(b'{"model_file": "\xff"}')
    with pytest.raises(ManifestError, match="cannot read the manifest") as info:
        load_manifest(tmp_path)
    assert str(tmp_path / "manifest.json") in str(info.value)


def test_load_names_path_and_field_when_the_content_is_invalid(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(_set(_minimal(), "input.width", "224")))
    with pytest.raises(ManifestError, match=re.escape(f"{tmp_path / 'manifest.json'}: field 'input.width'")):
        load_manifest(tmp_path)


# -- Threshold.normalize ---------------------------------------------------------------------------


@pytest.mark.parametrize(("threshold", "low", "high", "value", "expected"), [
    (0.5, -0.5, 1.0, 0.5, 0.5),
    (0.5, -0.5, 1.0, 1.25, 1.0),  # (1.25 - 0.5) / 1.5 + 0.5 = 1.0
    (0.5, -0.5, 1.0, 0.8, 0.7),  # 0.3 / 1.5 + 0.5
    (0.5, -0.5, 1.0, 0.2, 0.3),
    (0.5, -0.5, 1.0, 5.0, 1.0),  # clipped
    (0.5, -0.5, 1.0, -5.0, 0.0),  # clipped
    (12.0, 2.0, 42.0, 22.0, 0.75),  # 10 / 40 + 0.5
    (12.0, 2.0, 42.0, 2.0, 0.25),
])
def test_normalize_applies_anomalib_min_max_formula_when_min_and_max_are_given(
        threshold: float, low: float, high: float, value: float, expected: float) -> None:
    assert Threshold(threshold, low, high).normalize(value) == pytest.approx(expected)


@given(threshold=st.floats(-1e3, 1e3), span=st.floats(1e-3, 1e3), value=st.floats(-1e4, 1e4))
def test_normalize_matches_clipped_formula_when_min_and_max_are_given(threshold: float, span: float,
                                                                     value: float) -> None:
    low = threshold - span / 3
    high = low + span
    expected = min(1.0, max(0.0, (value - threshold) / (high - low) + 0.5))
    assert Threshold(threshold, low, high).normalize(value) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.99, 1.0, -2.0, 7.5])
def test_normalize_maps_threshold_to_one_half_when_no_min_max(threshold: float) -> None:
    assert Threshold(threshold).normalize(threshold) == pytest.approx(0.5)


def test_normalize_is_linear_on_unit_interval_when_no_min_max_and_threshold_inside() -> None:
    threshold = Threshold(0.2)
    assert threshold.normalize(0.0) == pytest.approx(0.0)
    assert threshold.normalize(0.1) == pytest.approx(0.25)
    assert threshold.normalize(0.6) == pytest.approx(0.75)
    assert threshold.normalize(1.0) == pytest.approx(1.0)
    assert threshold.normalize(3.0) == 1.0
    assert threshold.normalize(-3.0) == 0.0


@given(threshold=st.floats(-1e6, 1e6), a=st.floats(-1e7, 1e7), b=st.floats(-1e7, 1e7))
def test_normalize_is_monotonic_and_bounded_when_no_min_max(threshold: float, a: float, b: float) -> None:
    mapping = Threshold(threshold)
    low, high = sorted((a, b))
    n_low, n_high = mapping.normalize(low), mapping.normalize(high)
    assert 0.0 <= n_low <= n_high <= 1.0
    # The decision point is 0.5: values at or above the threshold never fall below it.
    if high >= threshold:
        assert n_high >= 0.5
    if low < threshold:
        assert n_low <= 0.5


@pytest.mark.parametrize(("threshold", "value", "expected"), [
    (16384.0, 16384.0, 0.5),  # threshold + 1e-12 rounds back to the threshold: once divided by zero
    (16384.0, 16385.0, 1.0),
    (16384.0, 0.0, 0.0),
    (-16384.0, -16385.0, 0.0),  # threshold - 1e-12 rounds back too
    (-16384.0, 1.0, 1.0),
    (1e300, 1e300, 0.5),
    (1e300, 2e300, 1.0),
])
def test_normalize_returns_a_value_when_threshold_is_too_large_for_an_epsilon(
        threshold: float, value: float, expected: float) -> None:
    assert Threshold(threshold).normalize(value) == pytest.approx(expected)


@pytest.mark.parametrize(("threshold", "value", "expected"), [
    (5.0, 5.0, 0.5), (5.0, 5.5, 1.0), (5.0, 2.5, 0.25), (5.0, -1.0, 0.0),
    (-2.0, -2.0, 0.5), (-2.0, -3.0, 0.0), (-2.0, -0.5, 0.75), (-2.0, 1.0, 1.0),
])
def test_normalize_saturates_the_empty_side_when_threshold_lies_outside_unit_interval(
        threshold: float, value: float, expected: float) -> None:
    assert Threshold(threshold).normalize(value) == pytest.approx(expected)
