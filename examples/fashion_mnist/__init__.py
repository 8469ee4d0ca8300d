"""Fashion-MNIST classifier: frozen pretrained EfficientNet-Lite0 backbone + trained 10-way linear head."""
