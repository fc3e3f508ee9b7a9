"""Running a component: ONNX Runtime graphs, torch modules from their version folders, the VAE frame graphs, random weights."""
