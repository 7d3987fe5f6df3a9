"""synth: synthetic tail-class chest X-ray augmentation (generator, filter, ablation)."""

__version__ = "0.1.0"
