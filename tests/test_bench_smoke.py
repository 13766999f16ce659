"""The benchmark suite (bench/) runs end to end in its smallest configuration.

These tests check structure, never timings: every group produces its rows, every number is finite
and positive, the targets are reported. The candidate implementations that BENCHMARKS.md's proposals
rest on are checked to give the agent's answers.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.candidates import box_reduce_resize, fast_mask
from bench.config import ALL_GROUPS, PRESETS
from bench.profiling import summarize
from edge_agent.imaging import paint, upscale_map

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    output = tmp_path_factory.mktemp("bench") / "smoke.json"
    done = subprocess.run([sys.executable, "-m", "bench", "--preset", "smoke", "--output", str(output)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    assert done.returncode == 0, f"python -m bench --preset smoke failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return json.loads(output.read_text()), done.stdout


def _names(rows: list[dict], group: str) -> set[str]:
    return {row["name"] for row in rows if row["group"] == group}


@pytest.mark.slow
def test_smoke_run_measures_every_group_when_run_with_the_smoke_preset(smoke_run: tuple[dict, str]) -> None:
    document, stdout = smoke_run
    rows = document["rows"]
    assert {row["group"] for row in rows} == set(ALL_GROUPS)
    assert not document["failures"]
    assert {"ORT session.run (floor)", "ORT session.run, ORT's default spin-waiting",
            "naive pre-process (Pillow+numpy)"} <= _names(rows, "baseline")
    assert {f"1 camera at {PRESETS['smoke'].cpu_fps:g} fps: agent CPU per call, {variant}"
            for variant in ("as shipped", "--ort-spinning")} <= _names(rows, "cpu")
    assert {"pre-process (agent)", "in-process pipeline"} <= _names(rows, "pipeline")
    assert {"DetectAnomalies inline", "DetectAnomalies shm"} <= _names(rows, "grpc")
    clients = {row["extra"]["clients"] for row in rows if row["group"] == "concurrency"}
    assert clients == set(PRESETS["smoke"].clients)
    assert {f"StartModel->RUNNING {kind} ({backend})" for kind in ("cold", "warm") for backend in ("cpu", "fake-gpu")
            } <= _names(rows, "startup")
    assert len(_names(rows, "memory")) == 3
    batching = _names(rows, "batching")
    assert {f"4 clients, batching off ({backend})" for backend in ("cpu", "fake-gpu")} <= batching
    assert {f"4 clients, batching up to 8, 2 ms delay ({backend})" for backend in ("cpu", "fake-gpu")} <= batching
    overload = _names(rows, "overload")
    assert "2 clients (the bound), back to back" in overload
    assert any(name.startswith("6 clients offering") and name.endswith("bound 2: answered") for name in overload)
    assert any(name.endswith("no bound reached: answered") for name in overload)
    assert "median" in stdout and "Targets:" in stdout
    assert {"machine", "config", "targets"} <= document.keys()
    assert document["machine"]["cores"] >= 1


@pytest.mark.slow
def test_smoke_run_reports_finite_positive_numbers_when_a_row_is_measured(smoke_run: tuple[dict, str]) -> None:
    rows = smoke_run[0]["rows"]
    measured = [row for row in rows if row["status"] == "ok"]
    cpu_rows = [row for row in measured if "fake-gpu" not in row["name"]]
    assert len(cpu_rows) == len([row for row in rows if "fake-gpu" not in row["name"]
                                 and "no call was refused" not in row["status"]]), "only fake-GPU rows may be n/a"
    for row in measured:
        for key in ("median", "p99", "floor_value"):
            value = row[key]
            assert value is not None and math.isfinite(value) and value > 0, (row["name"], key, value)
        assert row["n"] >= 1 and row["p99"] >= row["median"], row["name"]
        if row["ratio"] is not None:
            assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row["name"]
        if row["group"] == "concurrency":
            assert row["throughput"] > 0, row["name"]
    for row in rows:
        if row["status"] != "ok":  # the fake GPU may be missing; a short overload may refuse nothing
            assert row["status"].startswith(("n/a (fake GPU", "n/a (no call was refused")), row


@pytest.mark.slow
def test_smoke_run_reports_every_target_when_its_rows_are_missing(smoke_run: tuple[dict, str]) -> None:
    targets = smoke_run[0]["targets"]
    assert targets
    for target in targets:
        assert target["met"] in (True, False, None)
        assert target["name"] and target["detail"]


@pytest.mark.parametrize("size", [(1280, 720), (1000, 999), (300, 257), (64, 64)])
def test_fast_mask_equals_the_agents_mask_when_the_map_is_upscaled(size: tuple[int, int]) -> None:
    width, height = size
    rng = np.random.default_rng(width)
    amap = np.kron(rng.random((8, 8)), np.ones((8, 8))).astype(np.float32)  # blocks: long straight edges
    amap += rng.random(amap.shape).astype(np.float32) * 0.05
    palette = np.array([[255, 255, 255], [255, 0, 0]], np.uint8)
    for threshold in (float(np.quantile(amap, 0.9)), float(np.quantile(amap, 0.5)), float(amap[0, 0])):
        for strict in (False, True):
            upscaled = upscale_map(amap, width, height)
            labels = (upscaled > threshold if strict else upscaled >= threshold).astype(np.uint8)
            mask, counts = fast_mask(amap, width, height, threshold, palette, strict=strict)
            np.testing.assert_array_equal(mask, paint(labels, palette))
            np.testing.assert_array_equal(counts, np.bincount(labels.ravel(), minlength=2))


@pytest.mark.parametrize("size", [(1280, 720), (2049, 1537), (64, 64)])
def test_box_reduce_resize_stays_within_one_grey_level_of_pillow_when_downscaling(size: tuple[int, int]) -> None:
    from PIL import Image

    width, height = size
    target = (256, 256) if width > 256 else (32, 32)
    frame = np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(frame).resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0))
    result = box_reduce_resize(frame, target)
    assert result.shape == expected.shape
    assert np.abs(result.astype(int) - expected.astype(int)).max() <= 1


def test_profile_summary_charges_samples_to_the_deepest_agent_frame_when_stacks_are_collapsed(tmp_path: Path) -> None:
    collapsed = tmp_path / "p.collapsed.txt"
    collapsed.write_text(
        "main (bench/profile_target.py:30);profiled_loop (bench/profile_target.py:24);"
        "detect (/x/edge_agent/inference.py:130);upscale_map (/x/edge_agent/imaging.py:170);"
        "ImagingResample (PIL/_imaging.cpython-311-x86_64-linux-gnu.so) 3\n"
        "main (bench/profile_target.py:30);profiled_loop (bench/profile_target.py:24);"
        "detect (/x/edge_agent/inference.py:131);run (onnxruntime/capi/session.py:220) 1\n"
        "main (bench/profile_target.py:30);make_frame (bench/frames.py:40) 5\n")
    summary = summarize("p", collapsed, "profiled_loop")
    assert summary.samples == 4
    assert summary.self_top[0] == ("ImagingResample (PIL/_imaging.so)", 75.0)
    assert summary.agent_top[0] == ("upscale_map (edge_agent/imaging.py)", 75.0)
    assert summary.agent_top[1] == ("detect (edge_agent/inference.py)", 25.0)


def test_frames_asked_for_keep_each_groups_own_choice_among_them_and_never_empty_a_group() -> None:
    quick = PRESETS["quick"]
    assert quick.concurrency_frames == ("1280x720",)
    both = quick.with_frames(("256x256", "1280x720"))
    assert both.frames == ("256x256", "1280x720") and both.concurrency_frames == ("1280x720",)
    small = quick.with_frames(("256x256",))
    assert small.concurrency_frames is None and small.candidate_frames is None and small.cpu_frames is None
