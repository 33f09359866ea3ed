"""Files in and out: images and label stacks, planes of stacks, model files (safetensors, no
pickle) and exports (TorchScript, ONNX, bioimage.io)."""
