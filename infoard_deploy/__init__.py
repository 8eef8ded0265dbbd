"""infoard-deploy: distil adversarially robust compact classifiers (InfoARD and baselines),
export them to ONNX / TensorRT, and re-verify robustness on the deployed runtime."""

__version__ = "0.1.0"
