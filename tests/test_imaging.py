"""Frames in, tensors out, masks back: checked against plain numpy/Pillow references."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

from edge_agent.errors import InvalidArgumentError
from edge_agent.imaging import (
    Frame,
    Preprocessor,
    check_size,
    frame_from_bytes,
    frame_from_segment,
    hex_to_rgb,
    paint,
    upscale_labels,
    upscale_map,
)
from edge_agent.manifest import InputSpec

FIELD = "bitmap.shared_memory_handle"
_PIL_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
    "bicubic": Image.Resampling.BICUBIC,
}


def _image(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _padded(image: np.ndarray, stride: int, fill: int = 0xEE) -> np.ndarray:
    """The image as a 1-D buffer of rows ``stride`` bytes long, padding bytes set to ``fill``."""
    height, width, _ = image.shape
    rows = np.full((height, stride), fill, dtype=np.uint8)
    rows[:, : width * 3] = image.reshape(height, width * 3)
    return rows.reshape(-1)


# -- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(64, 64), (4096, 4096), (4096, 64), (64, 4096), (640, 480)])
def test_check_size_accepts_sides_when_within_64_to_4096(width: int, height: int) -> None:
    check_size(width, height)


@pytest.mark.parametrize(("width", "height", "side", "value"), [
    (63, 64, "width", 63),
    (64, 63, "height", 63),
    (4097, 64, "width", 4097),
    (64, 4097, "height", 4097),
    (0, 64, "width", 0),
    (64, -1, "height", -1),
])
def test_check_size_names_the_side_when_it_is_out_of_range(width: int, height: int, side: str,
                                                           value: int) -> None:
    with pytest.raises(InvalidArgumentError,
                       match=rf"^bitmap\.{side} is {value}; it must be between 64 and 4096 pixels\.$"):
        check_size(width, height)


def test_frame_from_bytes_checks_the_size_before_the_byte_count_when_both_are_wrong() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^bitmap\.width is 63"):
        frame_from_bytes(63, 64, b"")


@pytest.mark.parametrize(("width", "height"), [(64, 64), (4096, 64), (65, 71)])
def test_frame_from_bytes_keeps_the_pixels_when_byte_count_is_exact(width: int, height: int) -> None:
    image = _image(width, height)
    frame = frame_from_bytes(width, height, image.tobytes())
    assert (frame.width, frame.height, frame.stride) == (width, height, width * 3)
    np.testing.assert_array_equal(frame.array(), image)


@pytest.mark.parametrize("delta", [-1, 1, -64 * 3])
def test_frame_from_bytes_states_expected_count_when_byte_count_is_off(delta: int) -> None:
    got = 64 * 64 * 3 + delta
    with pytest.raises(InvalidArgumentError, match=(
            rf"^bitmap\.byte_data holds {got} bytes but a 64x64 RGB888 image is "
            r"width\*height\*3 = 12288 bytes\. "
            r"Send packed, interleaved RGB rows with no padding\.$")):
        frame_from_bytes(64, 64, bytes(got))


def test_frame_from_bytes_suggests_rgba_when_there_are_four_bytes_per_pixel() -> None:
    with pytest.raises(InvalidArgumentError, match=r"holds 20480 bytes.*4 bytes per pixel.*RGBA/BGRX"):
        frame_from_bytes(80, 64, bytes(80 * 64 * 4))


def test_frame_from_bytes_names_the_field_when_one_is_given() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^anomaly_mask\.byte_data holds 1 bytes"):
        frame_from_bytes(64, 64, b"\x00", field="anomaly_mask")


# -- frames from shared memory --------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height", "stride"), [
    (65, 64, 196),  # GStreamer rounds RGB rows up to 4 bytes
    (64, 64, 224),
    (100, 70, 300 + 64),
])
def test_frame_from_segment_matches_packed_pixels_when_rows_are_padded(width: int, height: int,
                                                                        stride: int) -> None:
    image = _image(width, height, seed=width)
    packed = frame_from_segment(width, height, image.reshape(-1).copy(), FIELD)
    padded = frame_from_segment(width, height, _padded(image, stride), FIELD)

    assert packed.stride == width * 3
    assert padded.stride == stride
    np.testing.assert_array_equal(padded.array(), image)
    np.testing.assert_array_equal(padded.array(), packed.array())
    np.testing.assert_array_equal(np.asarray(padded.to_pil()), image)


@pytest.mark.parametrize("model_size", [(65, 64), (48, 40), (128, 96)])
def test_preprocessor_gives_packed_result_when_rows_are_padded(model_size: tuple[int, int]) -> None:
    image = _image(65, 64, seed=9)
    spec = InputSpec(name=None, width=model_size[0], height=model_size[1], mean=(0.5, 0.4, 0.3),
                     std=(0.2, 0.3, 0.4))
    preprocess = Preprocessor(spec, np.dtype(np.float32))
    packed = frame_from_segment(65, 64, image.reshape(-1).copy(), FIELD)
    padded = frame_from_segment(65, 64, _padded(image, 196), FIELD)
    np.testing.assert_array_equal(preprocess(padded), preprocess(packed))


def test_frame_array_is_a_view_when_rows_are_padded() -> None:
    data = _padded(_image(64, 64), 200)
    frame = frame_from_segment(64, 64, data, FIELD)
    assert np.shares_memory(frame.array(), data)


@pytest.mark.parametrize("size", [64 * 64 * 3 + 1, 64 * 64 * 3 - 1, 64 * 193 + 5])
def test_frame_from_segment_rejects_size_when_not_a_multiple_of_height(size: int) -> None:
    with pytest.raises(InvalidArgumentError, match=(
            rf"^{FIELD}\.size is {size} bytes; for a 64x64 RGB888 image it must be 12288 \(packed rows\) "
            r"or height\*stride with each row at least 192 bytes")):
        frame_from_segment(64, 64, np.zeros(size, dtype=np.uint8), FIELD)


def test_frame_from_segment_rejects_size_when_rows_are_shorter_than_width_times_three() -> None:
    with pytest.raises(InvalidArgumentError, match=r"each row at least 192 bytes"):
        frame_from_segment(64, 64, np.zeros(64 * 191, dtype=np.uint8), FIELD)


def test_frame_from_segment_suggests_rgba_when_there_are_four_bytes_per_pixel() -> None:
    with pytest.raises(InvalidArgumentError, match=rf"^{FIELD}\.size holds 16384 bytes.*RGBA/BGRX"):
        frame_from_segment(64, 64, np.zeros(64 * 64 * 4, dtype=np.uint8), FIELD)


def test_frame_from_segment_checks_the_size_when_the_image_is_too_small() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^bitmap\.height is 0; it must be between 64 and 4096"):
        frame_from_segment(64, 0, np.zeros(192, dtype=np.uint8), FIELD)


# -- pre-processing -------------------------------------------------------------------------------


def _reference(image: np.ndarray, spec: InputSpec, dtype: Any) -> np.ndarray:
    """What the manifest asks for, written the obvious way."""
    if (image.shape[1], image.shape[0]) != (spec.width, spec.height):
        resized = Image.fromarray(image).resize((spec.width, spec.height), _PIL_FILTERS[spec.resize])
        image = np.asarray(resized)
    if spec.channel_order == "BGR":
        image = image[:, :, [2, 1, 0]]
    if np.dtype(dtype) == np.uint8:
        tensor = image.copy()
    else:
        tensor = np.empty(image.shape, dtype=np.float64)
        for channel in range(3):
            tensor[:, :, channel] = ((image[:, :, channel] * spec.scale - spec.mean[channel])
                                     / spec.std[channel])
        tensor = tensor.astype(dtype)
    if spec.layout == "NCHW":
        tensor = np.stack([tensor[:, :, c] for c in range(3)])
    return tensor[np.newaxis]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("channel_order", ["RGB", "BGR"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8"])
def test_preprocessor_builds_the_manifest_tensor_when_resizing(layout: str, channel_order: str,
                                                               dtype: str) -> None:
    # 96x72 -> 64x48 is a 1.5x reduction: Pillow's reducing_gap does not apply, so a plain resize matches.
    image = _image(96, 72, seed=3)
    spec = InputSpec(name="image", width=64, height=48, layout=layout, dtype=dtype,
                     channel_order=channel_order,
                     scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

    tensor = Preprocessor(spec, np.dtype(dtype))(frame_from_bytes(96, 72, image.tobytes()))

    expected = _reference(image, spec, dtype)
    shape = (1, 3, 48, 64) if layout == "NCHW" else (1, 48, 64, 3)
    assert tensor.shape == shape
    assert tensor.dtype == np.dtype(dtype)
    assert tensor.flags.c_contiguous
    tolerance = 2e-3 if dtype == "float16" else 1e-5
    np.testing.assert_allclose(tensor.astype(np.float64), expected.astype(np.float64),
                               rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("resize", ["bilinear", "area", "nearest", "bicubic"])
def test_preprocessor_uses_the_named_filter_when_resizing(resize: str) -> None:
    image = _image(100, 90, seed=4)
    spec = InputSpec(name=None, width=64, height=64, layout="NHWC", dtype="uint8", resize=resize)
    tensor = Preprocessor(spec, np.dtype(np.uint8))(frame_from_bytes(100, 90, image.tobytes()))
    np.testing.assert_array_equal(tensor, _reference(image, spec, "uint8"))


def test_preprocessor_scales_without_normalizing_when_mean_is_zero_and_std_one() -> None:
    image = _image(64, 64, seed=5)
    spec = InputSpec(name=None, width=64, height=64)
    tensor = Preprocessor(spec, np.dtype(np.float32))(frame_from_bytes(64, 64, image.tobytes()))
    np.testing.assert_allclose(tensor[0], image.transpose(2, 0, 1) / 255.0, rtol=1e-6)


def test_preprocessor_passes_raw_values_when_scale_is_one() -> None:
    image = _image(64, 64, seed=6)
    spec = InputSpec(name=None, width=64, height=64, scale=1.0, mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 8.0))
    tensor = Preprocessor(spec, np.dtype(np.float32))(frame_from_bytes(64, 64, image.tobytes()))
    for channel, (mean, std) in enumerate(zip(spec.mean, spec.std, strict=True)):
        expected = (image[:, :, channel] - mean) / std
        np.testing.assert_allclose(tensor[0, channel], expected, rtol=1e-5, atol=1e-5)


def test_preprocessor_resize_is_identity_when_frame_matches_model_input() -> None:
    image = _image(80, 64, seed=7)
    frame = frame_from_bytes(80, 64, image.tobytes())
    for resize in ("bilinear", "area", "nearest", "bicubic"):
        spec = InputSpec(name=None, width=80, height=64, layout="NHWC", dtype="uint8", resize=resize)
        preprocess = Preprocessor(spec, np.dtype(np.uint8))
        np.testing.assert_array_equal(preprocess.resized(frame), image)
        np.testing.assert_array_equal(preprocess(frame)[0], image)


def test_preprocessor_reads_bgr_in_reverse_when_channel_order_is_bgr() -> None:
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30
    spec = InputSpec(name=None, width=64, height=64, layout="NCHW", dtype="uint8", channel_order="BGR")
    tensor = Preprocessor(spec, np.dtype(np.uint8))(frame_from_bytes(64, 64, image.tobytes()))
    assert [int(tensor[0, c, 0, 0]) for c in range(3)] == [30, 20, 10]


def test_preprocessor_averages_boxes_when_downscaling_a_large_frame() -> None:
    # A 4x reduction with reducing_gap: still close to a plain area average of each 4x4 block.
    image = _image(256, 256, seed=8)
    spec = InputSpec(name=None, width=64, height=64, layout="NHWC", dtype="uint8", resize="area")
    tensor = Preprocessor(spec, np.dtype(np.uint8))(frame_from_bytes(256, 256, image.tobytes()))
    blocks = image.reshape(64, 4, 64, 4, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(tensor[0].astype(np.float64) - blocks).max() <= 2.0  # two roundings to uint8


# -- masks back -----------------------------------------------------------------------------------


def test_upscale_labels_repeats_each_label_when_scaling_by_integer_factors() -> None:
    labels = np.random.default_rng(10).integers(0, 3, (8, 8)).astype(np.uint8)
    out = upscale_labels(labels, 96, 64)
    assert out.shape == (64, 96)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(np.repeat(labels, 8, axis=0), 12, axis=1))


def test_upscale_labels_only_produces_existing_labels_when_scaling_by_odd_factors() -> None:
    labels = np.random.default_rng(11).integers(0, 5, (7, 9)).astype(np.int64)
    out = upscale_labels(labels, 100, 65)
    assert out.shape == (65, 100)
    assert out.dtype == np.uint8
    assert set(np.unique(out)) <= set(np.unique(labels))


def test_upscale_labels_returns_same_values_when_shape_already_matches() -> None:
    labels = np.random.default_rng(12).integers(0, 3, (64, 80)).astype(np.uint8)
    np.testing.assert_array_equal(upscale_labels(labels, 80, 64), labels)


def test_upscale_map_keeps_a_constant_map_when_upscaling() -> None:
    values = np.full((4, 4), 0.375, dtype=np.float64)
    out = upscale_map(values, 48, 32)
    assert out.shape == (32, 48)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 0.375, rtol=1e-6)


def test_upscale_map_interpolates_within_the_source_range_when_upscaling() -> None:
    values = np.random.default_rng(13).normal(size=(5, 6)).astype(np.float32)
    out = upscale_map(values, 96, 80)
    assert out.shape == (80, 96)
    assert values.min() - 1e-6 <= out.min() and out.max() <= values.max() + 1e-6
    # Bilinear of a ramp along x stays a non-decreasing ramp.
    ramp = np.tile(np.arange(6, dtype=np.float32), (5, 1))
    upscaled = upscale_map(ramp, 96, 80)
    assert np.all(np.diff(upscaled, axis=1) >= -1e-6)
    assert upscaled[:, 0].max() < 0.5 and upscaled[:, -1].min() > 4.5


def test_upscale_map_returns_same_values_when_shape_already_matches() -> None:
    values = np.random.default_rng(14).normal(size=(64, 72))
    out = upscale_map(values, 72, 64)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, values.astype(np.float32))


def test_paint_colours_each_label_when_given_a_palette() -> None:
    palette = np.array([hex_to_rgb("#FFFFFF"), hex_to_rgb("#FF0000"), hex_to_rgb("#00c000")], dtype=np.uint8)
    labels = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    mask = paint(labels, palette)
    assert mask.shape == (2, 3, 3)
    assert mask.dtype == np.uint8
    assert mask[0, 0].tolist() == [255, 255, 255]
    assert mask[0, 1].tolist() == [255, 0, 0]
    assert mask[0, 2].tolist() == [0, 192, 0]
    np.testing.assert_array_equal(mask[1], mask[0, ::-1])


def test_paint_gives_an_rgb888_mask_of_the_frame_size_when_labels_are_upscaled() -> None:
    palette = np.array([(255, 255, 255), (255, 0, 0)], dtype=np.uint8)
    labels = np.zeros((16, 16), dtype=np.uint8)
    labels[4:8, 4:8] = 1
    mask = paint(upscale_labels(labels, 65, 64), palette)
    assert mask.shape == (64, 65, 3)
    assert len(mask.tobytes()) == 65 * 64 * 3  # what a client reshapes to (height, width, 3)
    colours = {tuple(c) for c in mask.reshape(-1, 3).tolist()}
    assert colours == {(255, 255, 255), (255, 0, 0)}


@pytest.mark.parametrize(("color", "rgb"), [
    ("#FFFFFF", (255, 255, 255)), ("#FF8000", (255, 128, 0)),
    ("#00c0ff", (0, 192, 255)), ("#000000", (0, 0, 0)),
])
def test_hex_to_rgb_reads_rrggbb_when_given_a_colour(color: str, rgb: tuple[int, int, int]) -> None:
    assert hex_to_rgb(color) == rgb


def test_frame_to_pil_sees_packed_rows_when_built_directly() -> None:
    image = _image(64, 64, seed=15)
    frame = Frame(64, 64, 192, image.reshape(-1))
    assert frame.to_pil().size == (64, 64)
    np.testing.assert_array_equal(np.asarray(frame.to_pil()), image)


def test_paint_and_count_matches_numpy_and_hands_back_its_bytes_without_copy() -> None:
    from edge_agent.imaging import mask_bytes, paint_and_count

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=(97, 131), dtype=np.uint8)
    palette = np.array([[255, 255, 255], [255, 0, 0], [0, 192, 0]], dtype=np.uint8)
    mask, counts = paint_and_count(labels, palette)
    np.testing.assert_array_equal(mask, palette[labels])
    assert list(counts) == list(np.bincount(labels.ravel(), minlength=3))
    raw = mask_bytes(mask)
    assert raw == mask.tobytes()
    assert mask_bytes(mask) is raw  # the painted buffer itself, not a copy
    assert mask_bytes(palette[labels]) == raw  # any other array is packed


@pytest.mark.parametrize("seed", range(12))
def test_threshold_mask_equals_upscaling_then_thresholding(seed: int) -> None:
    from edge_agent.imaging import paint_and_count, threshold_mask, upscale_map

    rng = np.random.default_rng(seed)
    rows, cols = int(rng.integers(2, 70)), int(rng.integers(2, 70))
    height, width = int(rng.integers(rows, 900)), int(rng.integers(cols, 900))
    amap = rng.normal(size=(rows, cols)).astype(np.float32)
    if seed % 3 == 0:
        amap = np.round(amap, 1)  # ties at the threshold
    threshold = float(np.quantile(amap, rng.uniform(0.5, 0.99)))
    palette = np.array([[255, 255, 255], [255, 0, 0]], dtype=np.uint8)
    for strict in (False, True):
        upscaled = upscale_map(amap, width, height)
        labels = (upscaled > threshold if strict else upscaled >= threshold).astype(np.uint8)
        want_mask, want_counts = paint_and_count(labels, palette)
        mask, counts = threshold_mask(amap, width, height, threshold, palette, strict=strict)
        np.testing.assert_array_equal(mask, want_mask)
        assert list(counts) == list(want_counts)


@pytest.mark.parametrize(("width", "height", "stride_pad", "resize"), [
    (1280, 720, 0, "bilinear"), (4096, 4096, 0, "bilinear"), (1000, 777, 24, "bilinear"),
    (2000, 1500, 0, "area"), (1920, 1080, 8, "bicubic"), (600, 300, 0, "bilinear"),
])
def test_large_frames_resize_within_one_grey_level_of_pillow(width: int, height: int, stride_pad: int,
                                                             resize: str) -> None:
    from edge_agent.imaging import _REDUCING_GAP, _RESAMPLE

    rng = np.random.default_rng(width + height)
    stride = width * 3 + stride_pad
    data = rng.integers(0, 256, size=height * stride, dtype=np.uint8)
    frame = Frame(width, height, stride, data)
    spec = InputSpec(name=None, width=256, height=256, resize=resize)
    got = Preprocessor(spec, np.dtype(np.float32)).resized(frame)
    want = np.asarray(frame.to_pil().resize((256, 256), _RESAMPLE[resize], reducing_gap=_REDUCING_GAP))
    assert got.shape == want.shape == (256, 256, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


@pytest.mark.parametrize(("width", "height", "stride_pad", "block_bytes"), [
    (4096, 4096, 0, 2 << 20), (2000, 1500, 24, 100_000), (1111, 999, 5, 1), (700, 600, 0, 10_000_000),
])
def test_a_frame_read_in_blocks_resizes_exactly_as_the_same_frame_in_memory(
        width: int, height: int, stride_pad: int, block_bytes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_agent.imaging as imaging

    monkeypatch.setattr(imaging, "STREAM_BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(width * height)
    stride = width * 3 + stride_pad
    data = rng.integers(0, 256, size=height * stride, dtype=np.uint8)
    reads: list[tuple[int, int]] = []

    def read(start: int, out: np.ndarray) -> None:
        reads.append((start, out.size))
        out[:] = data[start:start + out.size]

    lazy = Frame(width, height, stride, None, read=read)
    in_memory = Frame(width, height, stride, data)
    spec = InputSpec(name=None, width=256, height=256, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))
    preprocess = Preprocessor(spec, np.dtype(np.float32))
    np.testing.assert_array_equal(preprocess(lazy), preprocess(in_memory))
    fy = imaging.reduce_factors(width, height, (256, 256))[1]
    if fy > 1:  # read once, in whole rows, blocks starting on fy-row groups (row bands read side by side)
        assert lazy.data is None
        assert all(start % (stride * fy) == 0 and size % stride == 0 for start, size in reads)
        ends = [0] + [start + size for start, size in sorted(reads)]
        assert [start for start, _ in sorted(reads)] == ends[:-1] and ends[-1] == height * stride
    else:  # small reductions read the frame whole, once, and keep it
        assert reads == [(0, height * stride)] and lazy.data is not None
        np.testing.assert_array_equal(lazy.array(), in_memory.array())
        assert len(reads) == 1


def test_a_failed_read_of_a_lazy_frame_reaches_the_caller() -> None:
    def read(start: int, out: np.ndarray) -> None:
        raise InvalidArgumentError("bitmap.shared_memory_handle: segment 'x' shrank")

    frame = Frame(4096, 4096, 4096 * 3, None, read=read)
    with pytest.raises(InvalidArgumentError, match="shrank"):
        Preprocessor(InputSpec(name=None, width=256, height=256), np.dtype(np.float32))(frame)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8"])
@pytest.mark.parametrize("order", ["RGB", "BGR"])
@pytest.mark.parametrize("identity", [True, False])
def test_the_tensor_is_pixel_times_scale_minus_mean_over_std_in_every_layout(layout: str, dtype: str, order: str,
                                                                             identity: bool) -> None:
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    frame = Frame(40, 48, 40 * 3, pixels.reshape(-1))
    if identity:
        spec = InputSpec(name=None, width=40, height=48, layout=layout, dtype=dtype, channel_order=order, scale=1.0)
    else:
        spec = InputSpec(name=None, width=40, height=48, layout=layout, dtype=dtype, channel_order=order,
                         scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    got = Preprocessor(spec, np.dtype(dtype))(frame)
    source = pixels[:, :, ::-1] if order == "BGR" else pixels
    if dtype == "uint8":
        want = source.copy()
    else:
        gain = (np.float32(spec.scale) / np.asarray(spec.std, np.float32)).astype(np.float32)
        bias = (-np.asarray(spec.mean, np.float32) / np.asarray(spec.std, np.float32)).astype(np.float32)
        want = (source.astype(np.float32) * gain + bias).astype(dtype)
    want = want.transpose(2, 0, 1)[np.newaxis] if layout == "NCHW" else want[np.newaxis]
    assert got.dtype == np.dtype(dtype) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("threads", [2, 3, 5])
@pytest.mark.parametrize(("width", "height", "stride_pad", "resize", "lazy"), [
    (1280, 720, 0, "bilinear", False), (1280, 720, 0, "bilinear", True), (4096, 4096, 0, "bilinear", True),
    (1000, 777, 24, "bicubic", False), (2000, 1500, 0, "area", True), (333, 200, 3, "bilinear", False),
    (120, 700, 0, "bicubic", False), (200, 150, 0, "bilinear", False),
])
def test_row_bands_change_no_pixel_of_the_resized_frame(threads: int, width: int, height: int, stride_pad: int,
                                                        resize: str, lazy: bool,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_agent.bands as bands
    import edge_agent.imaging as imaging

    monkeypatch.setattr(bands, "MIN_PIXELS_PER_BAND", 1)
    rng = np.random.default_rng(width * 7 + height)
    stride = width * 3 + stride_pad
    data = rng.integers(0, 256, size=height * stride, dtype=np.uint8)

    def frame() -> Frame:
        if not lazy:
            return Frame(width, height, stride, data)
        return Frame(width, height, stride, None, read=lambda start, out: np.copyto(out, data[start:start + out.size]))

    spec = InputSpec(name=None, width=256, height=224, resize=resize)
    preprocess = Preprocessor(spec, np.dtype(np.float32))
    monkeypatch.setattr(imaging, "BANDS", bands.RowBands(1))
    alone = preprocess.resized(frame())
    monkeypatch.setattr(imaging, "BANDS", bands.RowBands(threads))
    assert len(imaging.BANDS.spans(height, width * height)) > 1
    np.testing.assert_array_equal(preprocess.resized(frame()), alone)


@pytest.mark.parametrize("threads", [2, 3, 7])
@pytest.mark.parametrize("seed", range(6))
def test_row_bands_change_no_pixel_of_the_threshold_mask(threads: int, seed: int,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_agent.bands as bands
    import edge_agent.imaging as imaging

    monkeypatch.setattr(bands, "MIN_PIXELS_PER_BAND", 1)
    rng = np.random.default_rng(seed)
    rows, cols = int(rng.integers(2, 70)), int(rng.integers(2, 70))
    height, width = int(rng.integers(rows, 900)), int(rng.integers(cols, 900))
    amap = rng.normal(size=(rows, cols)).astype(np.float32)
    threshold = float(np.quantile(amap, rng.uniform(0.5, 0.99)))
    palette = np.array([[255, 255, 255], [255, 0, 0]], dtype=np.uint8)
    monkeypatch.setattr(imaging, "BANDS", bands.RowBands(1))
    want_mask, want_counts = imaging.threshold_mask(amap, width, height, threshold, palette)
    monkeypatch.setattr(imaging, "BANDS", bands.RowBands(threads))
    mask, counts = imaging.threshold_mask(amap, width, height, threshold, palette)
    np.testing.assert_array_equal(mask, want_mask)
    assert counts == want_counts
