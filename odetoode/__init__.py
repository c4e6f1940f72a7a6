"""odetoode: ODEtoODE policies and classifiers, trained offline and served online.

This package holds what both halves share and nothing heavy: the model-file contract (``odetoode.modelfile``).
The trainer lives in ``trainer`` (needs PyTorch), the server in ``service`` (ONNX Runtime, no PyTorch).
"""

__version__ = "0.1.0"
