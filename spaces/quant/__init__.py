"""Quantization: fake-quantized arithmetic per target scheme, calibration, and the PTQ steps that make low
bit-widths and per-tensor power-of-two grids work (equalization, bias correction, AdaRound)."""
