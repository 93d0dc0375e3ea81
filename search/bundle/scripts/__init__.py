"""Standalone scripts copied verbatim into a deployment bundle (see search.bundle.writer), and the bundle's texts.

The scripts import nothing from this project: they run on a Raspberry Pi (run_onnx.py: numpy + onnxruntime),
in the Vitis AI docker (quantize.py) and on the ZCU104 (run_vart.py), where this tool is not installed.
"""
