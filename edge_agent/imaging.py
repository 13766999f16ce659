"""Frames in, tensors out, masks back: the agent's image handling.

Frames are packed RGB888 (optionally with padded rows, as camera pipelines
hand them). Pre-processing resizes to the model's input with Pillow (its C
resampling reduces large frames by box filtering first, which is both fast and
an area-correct downscale), then scales and normalizes in one numpy pass.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from edge_agent.bands import BANDS
from edge_agent.constants import MAX_IMAGE_SIDE_PX, MIN_IMAGE_SIDE_PX, RGB_BYTES_PER_PIXEL
from edge_agent.errors import InvalidArgumentError
from edge_agent.manifest import InputSpec

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
    "bicubic": Image.Resampling.BICUBIC,
}
# Pillow first reduces by an integer factor with a box filter while the image stays at
# least this many times larger than the target: fast and free of aliasing.
_REDUCING_GAP = 2.0


def reduce_factors(width: int, height: int, target: tuple[int, int]) -> tuple[int, int]:
    """The integer box factors Pillow's ``resize(..., reducing_gap=2.0)`` reduces by first."""
    return max(1, int(width / target[0] / _REDUCING_GAP)), max(1, int(height / target[1] / _REDUCING_GAP))


def vertical_means(rows: np.ndarray, fy: int, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 -> (ceil(H / fy), W, 3) uint8: the rounded mean of every fy rows (into ``out``).

    Rows are summed as (groups, fy, W*3) in uint16, so the inner loop runs along whole rows.
    """
    height, width = rows.shape[:2]
    flat = rows.reshape(height, width * 3)  # a view, padded rows included
    full = height // fy
    if out is None:
        out = np.empty((-(-height // fy), width, 3), np.uint8)
    target = out.reshape(out.shape[0], width * 3)
    if full:
        sums = flat[: full * fy].reshape(full, fy, width * 3).sum(axis=1, dtype=np.uint16)
        sums += fy // 2
        np.floor_divide(sums, fy, out=sums)
        np.copyto(target[:full], sums, casting="unsafe")
    if height % fy:
        rest = height - full * fy
        target[full] = (flat[full * fy:].sum(axis=0, dtype=np.uint16) + rest // 2) // rest
    return out


# Reads ``out.size`` bytes of a frame, starting ``start`` bytes into it, into ``out``.
ReadBytes = Callable[[int, np.ndarray], None]
# Large frames not yet in memory are read this many bytes (whole rows) at a time.
STREAM_BLOCK_BYTES = 2 << 20
_blocks = threading.local()  # one block buffer per thread, reused from call to call


@dataclass(frozen=True)
class Frame:
    """An RGB888 image: ``height`` rows of ``stride`` bytes, ``width*3`` of them pixels.

    ``data`` holds the bytes, or is None for a frame still in a client's shared memory:
    ``read`` then copies bytes out on demand, so a large frame can be reduced a block of
    rows at a time instead of being copied whole first. ``array()`` reads it all (once).
    """

    width: int
    height: int
    stride: int
    data: np.ndarray | None  # 1-D uint8, at least height*stride bytes
    read: ReadBytes | None = None

    @property
    def loaded(self) -> np.ndarray:
        """The frame's bytes, read from their source on first use."""
        if self.data is None:
            assert self.read is not None, "a frame needs data or a way to read it"
            data = np.empty(self.height * self.stride, dtype=np.uint8)
            self.read(0, data)
            object.__setattr__(self, "data", data)  # a cache: the frame's content does not change
            return data
        return self.data

    def array(self) -> np.ndarray:
        """A (height, width, 3) uint8 view (no copy once the bytes are in memory)."""
        rows = self.loaded[: self.height * self.stride].reshape(self.height, self.stride)
        return rows[:, : self.width * RGB_BYTES_PER_PIXEL].reshape(self.height, self.width, RGB_BYTES_PER_PIXEL)

    def to_pil(self) -> Image.Image:
        return Image.frombuffer(
            "RGB", (self.width, self.height), self.loaded, "raw", "RGB", self.stride, 1
        )

    def row_means(self, fy: int, first: int = 0, stop: int | None = None) -> np.ndarray:
        """``vertical_means(self.array(), fy)[first:stop]``: rows of means (groups of fy frame rows),
        read a block of rows at a time when not in memory."""
        width, height, stride = self.width, self.height, self.stride
        groups = -(-height // fy)
        stop = groups if stop is None else min(stop, groups)
        top, bottom = first * fy, min(height, stop * fy)  # the frame rows those groups average
        if self.data is not None or self.read is None:
            return vertical_means(self.array()[top:bottom], fy)
        out = np.empty((stop - first, width, RGB_BYTES_PER_PIXEL), np.uint8)
        rows_per_block = max(fy, STREAM_BLOCK_BYTES // stride // fy * fy)  # whole groups of fy rows
        buffer = _block_buffer(rows_per_block * stride)
        for start in range(top, bottom, rows_per_block):
            count = min(rows_per_block, bottom - start)
            block = buffer[: count * stride]
            self.read(start * stride, block)
            pixels = block.reshape(count, stride)[:, : width * RGB_BYTES_PER_PIXEL]
            group = (start - top) // fy
            vertical_means(pixels.reshape(count, width, RGB_BYTES_PER_PIXEL), fy,
                           out=out[group: group - (-count // fy)])
        return out

    def rows_image(self, first: int, stop: int) -> Image.Image:
        """Rows ``first:stop`` as a Pillow RGB image (Pillow unpacks them straight from the bytes)."""
        data = self.loaded[first * self.stride: stop * self.stride]
        return Image.frombuffer("RGB", (self.width, stop - first), data, "raw", "RGB", self.stride, 1)


def _block_buffer(size: int) -> np.ndarray:
    buffer = getattr(_blocks, "buffer", None)
    if buffer is None or buffer.size < size:
        buffer = _blocks.buffer = np.empty(size, dtype=np.uint8)
    return buffer


def check_size(width: int, height: int, field: str = "bitmap") -> None:
    """Raises InvalidArgumentError unless both sides are within the accepted range."""
    for name, value in (("width", width), ("height", height)):
        if not MIN_IMAGE_SIDE_PX <= value <= MAX_IMAGE_SIDE_PX:
            raise InvalidArgumentError(
                f"{field}.{name} is {value}; it must be between {MIN_IMAGE_SIDE_PX} and {MAX_IMAGE_SIDE_PX} pixels."
            )


def frame_from_bytes(width: int, height: int, data: bytes, field: str = "bitmap") -> Frame:
    """Validates an inline bitmap: exactly width*height*3 bytes of packed RGB888."""
    check_size(width, height, field)
    expected = width * height * RGB_BYTES_PER_PIXEL
    if len(data) != expected:
        raise InvalidArgumentError(_byte_count_message(width, height, len(data), f"{field}.byte_data"))
    return Frame(width, height, width * RGB_BYTES_PER_PIXEL, np.frombuffer(data, dtype=np.uint8))


def frame_from_segment(width: int, height: int, data: np.ndarray, field: str) -> Frame:
    """Validates a frame read from shared memory, whose rows may be padded.

    ``len(data)`` is the handle's size: ``height * stride`` with ``stride >= width*3``.
    """
    return Frame(width, height, segment_stride(width, height, int(data.size), field), data)


def segment_stride(width: int, height: int, size: int, field: str) -> int:
    """The row stride of a shared-memory frame of ``size`` bytes; raises InvalidArgumentError if none fits.

    ``size`` is the handle's: ``height * stride`` with ``stride >= width*3``.
    """
    check_size(width, height, "bitmap")
    packed = width * RGB_BYTES_PER_PIXEL
    if size == width * height * 4:
        raise InvalidArgumentError(_byte_count_message(width, height, size, f"{field}.size"))
    if size % height != 0 or size // height < packed:
        raise InvalidArgumentError(
            f"{field}.size is {size} bytes; for a {width}x{height} RGB888 image it must be {width * height * 3} "
            f"(packed rows) or height*stride with each row at least {packed} bytes (padded rows)."
        )
    return size // height


def _byte_count_message(width: int, height: int, got: int, field: str) -> str:
    expected = width * height * RGB_BYTES_PER_PIXEL
    message = (
        f"{field} holds {got} bytes but a {width}x{height} RGB888 image is width*height*3 = {expected} bytes."
    )
    if got == width * height * 4:
        message += (
            " That is 4 bytes per pixel: the frame looks like RGBA/BGRX from a camera. Send packed RGB: drop "
            "the fourth channel (numpy: image[:, :, :3]), and for BGRX also reverse the channels "
            "(image[:, :, 2::-1], or OpenCV's cv2.COLOR_BGRA2RGB)."
        )
    else:
        message += " Send packed, interleaved RGB rows with no padding."
    return message


class Preprocessor:
    """Turns a Frame into the model's input tensor, as the manifest describes."""

    def __init__(self, spec: InputSpec, dtype: np.dtype) -> None:
        self.spec = spec
        self.dtype = dtype
        self._resample = _RESAMPLE[spec.resize]
        # x' = (x * scale - mean) / std  ==  x * gain + bias, per channel.
        std = np.asarray(spec.std, dtype=np.float32)
        self._gain = (spec.scale / std).astype(np.float32)
        self._bias = (-np.asarray(spec.mean, dtype=np.float32) / std).astype(np.float32)
        self._identity = bool(np.all(self._gain == 1.0) and np.all(self._bias == 0.0))

    def resized(self, frame: Frame) -> np.ndarray:
        """The frame resized to the model's input, (H, W, 3) uint8 RGB.

        The same pixels as Pillow's ``resize(size, filter, reducing_gap=2.0)`` on the whole frame
        (exactly so for frames fewer than 2x the input's height, within one grey level above),
        computed in its separable passes: rows of the frame are first reduced vertically by an
        integer factor in numpy when the frame is at least 4x the input's height (averaging
        straight from the frame's buffer or shared memory, a block of rows at a time: profiles
        showed Pillow copying the whole frame into its 4-byte layout first), then reduced by an
        integer factor and resampled horizontally by Pillow, in row bands on several threads
        (``bands.BANDS``): every row is independent in these steps. The vertical resampling then
        runs on the narrow result in column bands. Pillow up to 12 always ran its passes in this
        order; Pillow 13 runs the vertical one first for some shapes, which moves a few pixels by
        one grey level when both sides shrink (more when one side grows and the filter overshoots,
        bicubic's): the agent's answer does not depend on the Pillow release.
        """
        size = (self.spec.width, self.spec.height)
        if (frame.width, frame.height) == size:
            return frame.array()
        if self._resample == Image.Resampling.NEAREST:
            return np.asarray(frame.to_pil().resize(size, self._resample))
        fx, fy = reduce_factors(frame.width, frame.height, size)
        rows = -(-frame.height // fy)
        across = np.empty((rows, size[0], RGB_BYTES_PER_PIXEL), np.uint8)
        if frame.data is None and fy == 1:
            frame.loaded  # noqa: B018 - one read of a shared-memory frame, before the bands share it

        def band(first: int, stop: int) -> None:
            image = frame.rows_image(first, stop) if fy == 1 else Image.fromarray(frame.row_means(fy, first, stop))
            if fx > 1:
                image = image.reduce((fx, 1))
            if image.width != size[0] or fx > 1:
                box = (0.0, 0.0, frame.width / fx, float(stop - first))
                image = image.resize((size[0], stop - first), self._resample, box=box)
            across[first:stop] = np.asarray(image)

        pixels = frame.width * frame.height
        BANDS.run(band, BANDS.spans(rows, pixels))
        if rows == size[1] and frame.height % fy == 0:
            return across
        out = np.empty((size[1], size[0], RGB_BYTES_PER_PIXEL), np.uint8)
        box_height = frame.height / fy

        def columns(first: int, stop: int) -> None:  # the vertical pass: every column is independent
            strip = Image.fromarray(np.ascontiguousarray(across[:, first:stop]))
            box = (0.0, 0.0, float(stop - first), box_height)
            out[:, first:stop] = np.asarray(strip.resize((stop - first, size[1]), self._resample, box=box))

        BANDS.run(columns, BANDS.spans(size[0], pixels))
        return out

    def __call__(self, frame: Frame) -> np.ndarray:
        """Returns a batch of one: (1, 3, H, W) or (1, H, W, 3)."""
        pixels = self.resized(frame)
        if self.spec.channel_order == "BGR":
            pixels = pixels[:, :, ::-1]
        if self.dtype == np.float32 and self.spec.layout == "NCHW":
            # Straight into the planes of the batch: no HWC float image, no transposing copy (the
            # same multiply then add in float32, so the same values; about 8x faster at 256x256).
            height, width = pixels.shape[:2]
            tensor = np.empty((1, 3, height, width), np.float32)
            for channel in range(3):
                plane = tensor[0, channel]
                if self._identity:
                    np.copyto(plane, pixels[:, :, channel], casting="unsafe")
                else:
                    np.multiply(pixels[:, :, channel], self._gain[channel], out=plane, dtype=np.float32)
                    plane += self._bias[channel]
            return tensor
        if self.dtype == np.uint8:
            tensor = np.ascontiguousarray(pixels)
        else:
            tensor = pixels.astype(np.float32)
            if not self._identity:
                tensor *= self._gain
                tensor += self._bias
            if self.dtype != np.float32:
                tensor = tensor.astype(self.dtype)
        if self.spec.layout == "NCHW":
            tensor = tensor.transpose(2, 0, 1)
        return np.ascontiguousarray(tensor[np.newaxis])


def upscale_map(values: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a 2-D float map to (height, width) float32."""
    source = np.ascontiguousarray(values, dtype=np.float32)
    if source.shape == (height, width):
        return source
    image = Image.fromarray(source).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image)


def upscale_labels(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D uint8 label map to (height, width)."""
    source = np.ascontiguousarray(labels, dtype=np.uint8)
    if source.shape == (height, width):
        return source
    return np.asarray(Image.fromarray(source).resize((width, height), Image.Resampling.NEAREST))


def paint(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Paints a (H, W) label map with an (N, 3) uint8 palette: (H, W, 3) RGB888."""
    return paint_and_count(labels, palette)[0]


def paint_and_count(labels: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Paints a label map and counts its pixels per label, both in Pillow's C loops.

    Returns a read-only (H, W, 3) uint8 view over one ``bytes`` object (``mask_bytes`` gets it
    back without a copy) and one count per palette entry. Profiles showed numpy's
    ``palette[labels]`` and ``bincount`` (an int64 copy of the labels) as the agent's largest
    cost on large frames.
    """
    height, width = labels.shape
    source = np.ascontiguousarray(labels, dtype=np.uint8)
    indexed = Image.frombuffer("P", (width, height), source, "raw", "P", 0, 1)
    indexed.putpalette(palette.astype(np.uint8).tobytes())
    counts = indexed.histogram()[: len(palette)]
    raw = indexed.convert("RGB").tobytes()
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3), counts


def bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's bilinear taps for an upscale (or same size): first index, second index, their weights."""
    if out_size < in_size:
        raise ValueError("only upscaling is handled here")
    scale = in_size / out_size
    centers = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    first = np.clip(np.trunc(centers - 1.0 + 0.5), 0, None).astype(np.int64)
    last = np.minimum(np.trunc(centers + 1.0 + 0.5).astype(np.int64), in_size)  # exclusive

    def triangle(x: np.ndarray) -> np.ndarray:
        x = np.abs(x)
        return np.where(x < 1.0, 1.0 - x, 0.0)

    w0 = triangle(first - centers + 0.5)
    w1 = np.where(first + 1 < last, triangle(first + 1 - centers + 0.5), 0.0)
    total = w0 + w1
    second = np.minimum(first + 1, in_size - 1)
    return first, second, w0 / total, w1 / total


def threshold_mask(amap: np.ndarray, width: int, height: int, threshold: float, palette: np.ndarray, *,
                   strict: bool = False) -> tuple[np.ndarray, list[int]]:
    """Mask and per-class pixel counts of a one-channel map upscaled bilinearly and thresholded.

    The same answer as ``upscale_map`` then a comparison, without the frame-sized float map:
    Pillow resamples horizontally then vertically; the horizontal pass is Pillow's own (to the
    frame's width, on the map's rows only), and the vertical one is computed only for columns
    whose two source rows straddle the threshold (elsewhere every interpolated value lies on the
    same side). The map must not be larger than the frame in either direction. The work is cut
    into bands of source rows (each with the output rows that start on them) run side by side
    (``bands.BANDS``); every output row depends on its two source rows only.
    """
    source = np.ascontiguousarray(amap, dtype=np.float32)
    rows_in = source.shape[0]
    y0, y1, wy0, wy1 = bilinear_taps(rows_in, height)
    exceeds = np.greater if strict else np.greater_equal
    # Output rows starts[j]:starts[j + 1] are interpolated from source rows j and y1 (j + 1).
    starts = np.searchsorted(y0, np.arange(rows_in + 1), side="left")
    mask = np.empty((height, width, RGB_BYTES_PER_PIXEL), np.uint8)

    def band(first: int, stop: int) -> int:
        """Paints the output rows of source rows first:stop; returns how many pixels are anomalous."""
        last = min(rows_in, stop + 1)  # and the next source row, which the last rows lean towards
        part = source[first:last]
        if part.shape[1] != width:
            across = np.asarray(Image.fromarray(part).resize((width, last - first), Image.Resampling.BILINEAR))
        else:
            across = part
        above = exceeds(across, threshold)
        count = stop - first
        following = above[1:] if last > stop else np.concatenate([above[1:], above[-1:]])
        above = above[:count]
        both = above & following  # rows j and j+1 both above: so is every row interpolated between them
        straddle = above ^ following
        top, bottom = int(starts[first]), int(starts[stop])
        colors = np.take(palette, both.view(np.uint8), axis=0)  # paint the source rows, then copy rows out
        # mode="clip": the indices are in range; the default ("raise") writes to a temporary copy first.
        np.take(colors, y0[top:bottom] - first, axis=0, out=mask[top:bottom], mode="clip")
        rows_per_source = np.diff(starts[first: stop + 1])
        anomalous = int(np.count_nonzero(both, axis=1) @ rows_per_source)
        src_rows, cols = np.nonzero(straddle)
        repeats = rows_per_source[src_rows]
        if repeats.sum():
            first_row = starts[first + src_rows]
            cell = np.repeat(np.arange(src_rows.size), repeats)
            offsets = np.arange(cell.size) - np.repeat(np.cumsum(repeats) - repeats, repeats)
            ys = first_row[cell] + offsets
            xs = cols[cell]
            a = across[y0[ys] - first, xs].astype(np.float64)
            b = across[y1[ys] - first, xs].astype(np.float64)
            hits = exceeds((a * wy0[ys] + b * wy1[ys]).astype(np.float32), threshold)
            anomalous += int(np.count_nonzero(hits))
            mask[ys, xs] = np.take(palette, hits.view(np.uint8), axis=0)
        return anomalous

    anomalous = sum(BANDS.run(band, BANDS.spans(rows_in, width * height)))
    return mask, [width * height - anomalous, anomalous]


def mask_bytes(mask: np.ndarray) -> bytes:
    """The mask's RGB888 bytes: the buffer under a painted mask itself, or a packed copy."""
    base = mask
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, bytes) and len(base) == mask.nbytes and mask.flags.c_contiguous:
        return base
    return mask.tobytes()


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)
