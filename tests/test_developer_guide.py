"""The developer guide's client loop, unmodified, against a real agent."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

import edge_agent_pb2 as pb2
from tests import guide_client, model_factory
from tests.conftest import RunningAgent


@pytest.mark.parametrize(("image", "anomalous"), [
    (model_factory.with_patch(model_factory.grey_frame(200, 150), 50, 40, 40, 30, (255, 0, 0)), True),
    (model_factory.grey_frame(200, 150), False),
])
def test_guide_client_starts_model_and_detects_when_run_as_written(
    running_agent: RunningAgent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, image, anomalous: bool
) -> None:
    monkeypatch.setattr(guide_client, "SOCKET_ADDRESS", running_agent.address)
    path = tmp_path / "frame.png"
    Image.fromarray(image).save(path)
    response = guide_client.main("redness-seg", str(path))
    result = response.detect_anomaly_result
    assert result.is_anomalous is anomalous
    assert 0 < result.confidence <= 1
    assert result.anomalies[0].name == "background"
    assert (result.anomaly_mask.width, result.anomaly_mask.height) == (200, 150)
    description = running_agent.stub.DescribeModel(pb2.DescribeModelRequest(model_component="redness-seg"))
    assert description.model_description.status == pb2.RUNNING
    # A second run finds the model RUNNING and does not call StartModel again.
    assert guide_client.main("redness-seg", str(path)).detect_anomaly_result.is_anomalous is anomalous
