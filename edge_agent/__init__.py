"""Edge inference agent serving the Lookout for Vision Edge Agent gRPC API."""

import edge_agent_pb2
import edge_agent_pb2_grpc
from edge_agent._version import __version__

__all__ = ["__version__", "edge_agent_pb2", "edge_agent_pb2_grpc"]
