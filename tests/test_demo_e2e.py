"""The demo models served over gRPC on real held-out crops, and the README's client snippet."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import edge_agent_pb2 as pb2
from edge_agent import demo
from edge_agent.client import OwnedSegment
from tests.conftest import RunningAgent, start_agent

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def demo_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    models_dir = tmp_path_factory.mktemp("demo-models")
    demo.build_demo_models(models_dir)
    socket_dir = Path(tempfile.mkdtemp(prefix="ea-"))
    agent = start_agent([models_dir], socket_dir)
    try:
        for name in (demo.SEGMENTATION_NAME, demo.CLASSIFICATION_NAME):
            assert agent.start_and_wait(name).status == pb2.RUNNING
        yield agent
    finally:
        agent.channel.close()
        agent.agent.stop(1.0)
        shutil.rmtree(socket_dir, ignore_errors=True)


def detect(agent: RunningAgent, name: str, frame: np.ndarray) -> pb2.DetectAnomalyResult:
    height, width = frame.shape[:2]
    request = pb2.DetectAnomaliesRequest(
        model_component=name, bitmap=pb2.Bitmap(width=width, height=height, byte_data=frame.tobytes()))
    return agent.stub.DetectAnomalies(request).detect_anomaly_result


def heldout_cases() -> list[tuple[np.ndarray, np.ndarray | None]]:
    rng = np.random.default_rng(20261203)
    crops = demo.heldout_crops()
    cases: list[tuple[np.ndarray, np.ndarray | None]] = [(crop, None) for crop in crops[::3]]
    for index, crop in enumerate(crops[1::3]):
        kind = demo.DEFECT_KINDS[index % len(demo.DEFECT_KINDS)]
        cases.append(demo.paint_defect(crop, kind, rng))
    return cases


@pytest.mark.parametrize("name", [demo.SEGMENTATION_NAME, demo.CLASSIFICATION_NAME])
def test_demo_model_flags_painted_defects_and_passes_good_crops_over_grpc(demo_agent: RunningAgent, name: str) -> None:
    wrong = []
    for index, (frame, painted) in enumerate(heldout_cases()):
        result = detect(demo_agent, name, frame)
        assert 0 < result.confidence <= 1
        if result.is_anomalous != (painted is not None):
            wrong.append(index)
    assert not wrong, f"misclassified held-out frames: {wrong}"


def test_demo_segmentation_mask_covers_painted_defect_when_sent_by_shared_memory(demo_agent: RunningAgent) -> None:
    recalls = []
    for frame, painted in heldout_cases():
        if painted is None:
            continue
        with OwnedSegment(frame.nbytes) as image_seg, OwnedSegment(frame.nbytes) as mask_seg:
            image_seg.write(frame)
            request = pb2.DetectAnomaliesRequest(
                model_component=demo.SEGMENTATION_NAME,
                bitmap=pb2.Bitmap(width=256, height=256, shared_memory_handle=image_seg.handle()),
                anomaly_mask_params=pb2.AnomalyMaskParams(shared_memory_handle=mask_seg.handle()))
            result = demo_agent.stub.DetectAnomalies(request).detect_anomaly_result
            mask = np.frombuffer(mask_seg.read(frame.nbytes), np.uint8).reshape(256, 256, 3)
        flagged = np.all(mask == (255, 0, 0), axis=2)
        assert result.anomalies[0].name == "background"
        assert result.anomalies[1].pixel_anomaly.total_percentage_area == pytest.approx(flagged.mean(), abs=1e-6)
        recalls.append(flagged[painted].mean())
    assert np.median(recalls) >= 0.5 and min(recalls) > 0, recalls


def test_readme_client_snippet_runs_against_demo_agent(demo_agent: RunningAgent, tmp_path: Path) -> None:
    snippet = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert snippet is not None
    samples = demo.write_demo_samples(tmp_path / "samples")
    code = snippet.group(1)
    code = code.replace("unix:///tmp/aws.iot.lookoutvision.EdgeAgent.sock", demo_agent.address)
    code = code.replace(".demo/samples/", f"{tmp_path}/samples/")
    assert any(p.name == "scratch.png" for p in samples)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    printed = output.getvalue()
    assert printed.startswith("True "), printed
    assert "('background'" in printed and "('anomaly'" in printed
