"""A fake GPU for CI and demos: a CUDA device and a ``tensorrt`` module that behave like the real ones.

:class:`~edge_agent.engines.fakes.cuda.FakeCudaDriver` plugs into
:class:`~edge_agent.engines.cuda.CudaDevice` like pycuda or cuda-python does;
:func:`~edge_agent.engines.fakes.tensorrt.make_fake_tensorrt` returns a module
object with TensorRT's names and signatures for the subset the agent uses,
whose engines run the ONNX model with ONNX Runtime on the fake device's buffers.
"""

from edge_agent.engines.fakes.cuda import FakeCudaDriver
from edge_agent.engines.fakes.tensorrt import make_fake_tensorrt

__all__ = ["FakeCudaDriver", "make_fake_tensorrt"]
