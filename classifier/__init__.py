"""classifier: multi-resolution timm ConvNeXt ensembles and CXR-LT metrics."""
