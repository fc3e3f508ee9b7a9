"""Running a component: a runner per engine (runners), ONNX Runtime graphs, torch modules from their version folders, the
VAE frame graphs, random weights."""
