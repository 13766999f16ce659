"""Inference backends (installed as ``edge_agent.engines``)."""
