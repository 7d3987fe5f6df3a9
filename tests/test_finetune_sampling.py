import itertools

import numpy as np
import pytest

from synth.generator.row_sampling import ResumableWeightedSampler, image_weights


def _sets():
    return [("Normal",)] * 95 + [("Pneumothorax",)] * 4 + [("Pneumothorax", "Fracture")]


def test_repeat_factor_matches_lvis_formula():
    w = image_weights(_sets(), "repeat_factor", threshold=0.1)
    assert w[0] == 1.0  # frequent class: no repeat
    assert w[95] == pytest.approx(np.sqrt(0.1 / 0.05))
    assert w[99] == pytest.approx(np.sqrt(0.1 / 0.01))  # max over its classes (Fracture)


def test_class_balanced_and_uniform():
    w = image_weights(_sets(), "class_balanced")
    assert w[0] * 95 == pytest.approx(w[95] * 5)
    assert (image_weights(_sets(), "uniform") == 1).all()
    with pytest.raises(ValueError):
        image_weights(_sets(), "nope")


def test_tail_seen_more_often_than_uniform():
    s = ResumableWeightedSampler(image_weights(_sets(), "repeat_factor"), seed=0)
    drawn = list(itertools.islice(iter(s), 5000))
    tail_share = np.mean([i >= 95 for i in drawn])
    assert tail_share > 0.05 * 1.5


def test_resume_continues_same_stream():
    w = image_weights(_sets(), "repeat_factor")
    full = list(itertools.islice(iter(ResumableWeightedSampler(w, seed=3)), 250))
    first = ResumableWeightedSampler(w, seed=3)
    head = list(itertools.islice(iter(first), 130))
    resumed = ResumableWeightedSampler(w, seed=0)
    resumed.load_state_dict(first.state_dict())
    tail = list(itertools.islice(iter(resumed), 120))
    assert head + tail == full
