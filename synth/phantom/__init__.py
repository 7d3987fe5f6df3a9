"""The phantom CXR-LT benchmark: procedural chest radiographs with known ground truth.

``render_image`` / ``render_with_regions`` draw one image from a label set and
a seed; ``sample_label_sets`` draws PadChest-derived label sets;
``render_dataset`` writes a whole CXR-LT-format dataset (``synth phantom``).
"""

from synth.phantom.labels import label_set_table, sample_balanced_label_sets, sample_label_sets
from synth.phantom.render import Rendered, canonical_labels, render_image, render_with_regions


def render_dataset(*args, **kwargs):
    from synth.phantom.dataset import render_dataset as _render_dataset

    return _render_dataset(*args, **kwargs)


__all__ = [
    "Rendered",
    "canonical_labels",
    "label_set_table",
    "render_dataset",
    "render_image",
    "render_with_regions",
    "sample_balanced_label_sets",
    "sample_label_sets",
]
