"""odetoode trainer: ODEtoODE models, manifold optimization, training and unrolled ONNX export (needs PyTorch)."""
