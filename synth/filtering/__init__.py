"""``synth filter``: label-verifier, CXR-feature FID/KID, outliers, near-copy check; phantom oracle."""

from synth.filtering.config import FilterConfig, VerifierConfig, load_filter_config, load_verifier_config
from synth.filtering.oracle import train_oracle
from synth.filtering.pipeline import run_filter
from synth.filtering.verifier import FeatureExtractor, load_verifier, train_verifier

__all__ = [
    "FilterConfig",
    "VerifierConfig",
    "load_filter_config",
    "load_verifier_config",
    "train_verifier",
    "load_verifier",
    "FeatureExtractor",
    "run_filter",
    "train_oracle",
]
