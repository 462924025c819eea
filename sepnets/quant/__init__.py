"""INT8 quantization: fake quantization with deployed numerics, BatchNorm folding, calibration
(PTQ), QAT wiring and per-layer sensitivity."""
