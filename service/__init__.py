"""odetoode service: serves ODEtoODE models from an ONNX model repository over gRPC and REST (no PyTorch)."""
