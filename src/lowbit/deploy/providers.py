"""onnxruntime's execution providers by the names lowbit's CLI takes (``--provider``).

Kept apart from :mod:`lowbit.deploy.runtime` so that the CLI lists them without importing onnxruntime. CUDA and
TensorRT come with the onnxruntime-gpu package, which replaces the CPU-only onnxruntime.
"""

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
