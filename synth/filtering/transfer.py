"""Per-class transfer gate: does a class's synthetic set teach the finding, judged on REAL data only?

Why: a generator that cannot draw a finding still yields a set the label-verifier passes (on the
phantom at 6,000 UNet steps, 90 % of the Pulmonary Hypertension images passed while the oracle saw
the finding in 1 %), and 200 such images labelled with the class teach "looks generated" instead:
that class's AP fell 0.228 -> 0.013. Users on real data have no oracle, so the filter must decide
from real data alone whether a set carries its finding.

The test is train-on-synthetic / test-on-real (the "classification accuracy score" of Ravuri &
Vinyals 2019), per class c, on frozen features (the filter's extractor):

1. fit a small probe (standardised features, L2 logistic regression, balanced classes) on
   generated images ONLY: positives = the images generated for c, negatives = images generated for
   the other classes whose label set excludes c (so "looks generated" is on both sides and cannot
   be what the probe learns);
2. score the REAL train + val rows whose label for c is known (never test rows) and take the AUROC
   of c, with a patient-bootstrap percentile interval (patients resampled with replacement). Real
   negatives positive for one of the probe's negative classes (another generated class) are left
   out: the probe was fitted to push those down, so keeping them would credit a set that teaches
   only "none of the other generated findings" (a pure-noise set) with a high AUROC;
3. the class passes when the interval's lower bound is above ``transfer_min_auroc`` (0.5 = chance).
   A failing class loses its whole set, with reason ``no_transfer``.

A class that cannot be judged is handled by an explicit policy (``transfer_unjudged``, default
``keep``): fewer than ``transfer_min_real_positives`` real train+val positives (no real evidence to
score against), or fewer than ``transfer_min_synthetic`` generated positives or negatives (nothing to
fit). ``keep`` leaves the set to the other rules and reports ``judged: false`` with the reason;
``reject`` drops it with ``no_transfer``. Keeping is the default because dropping would remove
exactly the rarest classes, where real data cannot say anything either way; the report shows which
classes were not judged.

A generated class whose set is drawn as another generated class c also muddies c's probe (c-looking
negatives): c may fail too. That errs on the side of dropping, and it is the harm the mixing arm
would suffer as well (those images are c-negatives there).

Which features (``transfer_extractor``): by default the filter's extractor, i.e. the label-verifier's
backbone. Those features were fitted to the real labels, and that opens a shortcut: on the filter
test fixture (three mutually exclusive classes plus normals) a Rib Fracture set of plain
backgrounds passed with AUROC 1.0 in verifier space, because the verifier places real rib-fracture
images farthest from the other two findings, i.e. furthest along "none of the other generated
findings". With a generic encoder (a random-init resnet10t in the test) the same set scored 0.0 and
was dropped, faithful sets kept (0.83-1.0). A set drawn as another class was dropped in both spaces.
On the phantom the shortcut did not show: ``bench_transfer_gate.py`` (retired, see research/README.md; 3,000
phantom images at 64 px, the demo verifier, 40 rendered images per set, 6 tail classes with 5-23 real train+val
positives) dropped all 6 blank sets (rendered without the finding) in verifier features, and kept
3 of 6 faithful sets (rendered with it): the three dropped faithful sets are the classes with 5, 6
and 9 real positives, whose intervals are too wide to clear 0.5 (e.g. Azygos Lobe 0.743 [0.492,
0.964]). The random-init encoder did no better (faithful 3/6 kept, blank 5/6 dropped). So with few
real positives the rule "interval must clear chance" costs faithful sets; ``transfer_min_real_positives``
(default 3) moves classes into "not judged" instead.

What it does not see: whether the finding is drawn well enough to help the classifier (a faint finding can
transfer and still be too weak), and co-occurring findings (only the target class is judged). Measured against
the phantom oracle (evaluation only, never fed to this gate), the AUROC does not track the share of a set in
which the oracle sees the finding: Spearman -0.13 over the 16 natural sets of a fresh phantom-cpu run, and
+0.005 over 126 sets of known fidelity built from the same run's images (``bench/results/gate_dose_response.json``:
mean AUROC 0.86 with no faithful image, 0.88 with only faithful ones). Images the oracle rejects
still carry class-specific content that transfers to real positives. A third fresh run repeats it (224 sets:
0.845 vs 0.887), and it is not the co-occurring findings the prompts list: with the real scores adjusted for
each row's other labels the no-faithful-image sets still score 0.80 (``--dose --residual``). So the gate drops
sets WITHOUT class content (noise, another class's images: the tests), not sets that merely draw the finding
rarely. Much of that is the few real positives (4-68 per tail class there): the same verifier recipe trained
on fresh phantom cohorts of 10k / 30k / 60k images ranks both runs' sets against the oracle at Spearman +0.34
/ -0.14, +0.37 / -0.09, +0.70 / +0.28 (``bench/results/gate_scale.json``), so the gate should say more on
MIMIC-sized data than on phantom-cpu; the report's "Did the gate see which kept sets helped?" table is how a
user checks that on their own run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

UNJUDGED_POLICIES = ("keep", "reject")


@dataclass
class TransferResult:
    """The gate's verdict on one class's synthetic set (summary.json ``classes[c].transfer``)."""

    judged: bool
    passed: bool  #: False = the set is dropped with reason no_transfer
    auroc: float | None = None  #: probe AUROC of c on real train+val rows
    ci: tuple[float | None, float | None] = (None, None)
    n_real_pos: int = 0
    n_real_neg: int = 0
    n_synthetic_pos: int = 0
    n_synthetic_neg: int = 0
    reason: str = ""  #: why a class was not judged, or why it failed

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = list(self.ci)
        return d


def probe_scores(
    syn_x: np.ndarray, syn_y: np.ndarray, real_x: np.ndarray, c: float = 1.0, seed: int = 0
) -> np.ndarray:
    """Fit the logistic probe on synthetic features/labels; return its decision scores on the real features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(
        StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed)
    )
    probe.fit(np.asarray(syn_x, dtype=np.float64), np.asarray(syn_y, dtype=int))
    return probe.decision_function(np.asarray(real_x, dtype=np.float64))


def patient_bootstrap_auroc(
    y: np.ndarray, scores: np.ndarray, patients: np.ndarray, n_boot: int, ci_level: float, seed: int
) -> tuple[float, tuple[float | None, float | None]]:
    """AUROC and its percentile interval over patient resamples (a patient's images move together).

    Not ``scipy.stats.bootstrap``: it resamples observations independently (here the unit is the patient,
    whose images must move together), it would fail or give NaN on a resample with one class only (skipped
    here, as AUROC is undefined), and its default BCa interval differs from the percentile interval the
    gate's thresholds were judged with.
    """
    from sklearn.metrics import roc_auc_score

    auroc = float(roc_auc_score(y, scores))
    codes, uniques = pd.factorize(pd.Series(patients).astype(str))
    rows_of = [np.flatnonzero(codes == k) for k in range(len(uniques))]
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = np.concatenate([rows_of[k] for k in rng.integers(0, len(uniques), size=len(uniques))])
        yb = y[idx]
        if yb.min() == yb.max():
            continue
        boots.append(roc_auc_score(yb, scores[idx]))
    if not boots:
        return auroc, (None, None)
    lo, hi = np.percentile(boots, [100 * (1 - ci_level) / 2, 100 * (1 + ci_level) / 2])
    return auroc, (float(lo), float(hi))


def transfer_gate(
    cls: str,
    syn_features: np.ndarray,
    target: np.ndarray,
    syn_labels: np.ndarray,
    real_features: np.ndarray,
    real_labels: np.ndarray,
    real_patients: np.ndarray,
    *,
    real_exclude: np.ndarray | None = None,
    min_auroc: float = 0.5,
    min_real_positives: int = 3,
    min_synthetic: int = 5,
    unjudged: str = "keep",
    n_boot: int = 200,
    ci_level: float = 0.95,
    probe_c: float = 1.0,
    seed: int = 0,
) -> TransferResult:
    """Judge class ``cls``'s synthetic set.

    ``target``: each synthetic row's target class; ``syn_labels``: each synthetic row's label for
    ``cls`` (1 / 0 / NaN); ``real_labels``: the real rows' labels for ``cls`` (NaN = not annotated);
    ``real_exclude``: real rows left out when they are negatives of ``cls`` (positives of the other generated
    classes, see the module doc). The real rows must be train + val rows only: the caller never passes test rows.
    """
    if unjudged not in UNJUDGED_POLICIES:
        raise ValueError(f"transfer_unjudged must be one of {UNJUDGED_POLICIES}, got {unjudged!r}")
    pos = target == cls
    neg = (target != cls) & (syn_labels != 1.0)
    known = ~np.isnan(real_labels)
    if real_exclude is not None:
        known &= ~(np.asarray(real_exclude, bool) & (real_labels != 1.0))
    y_real = real_labels[known]
    result = TransferResult(
        judged=False,
        passed=unjudged == "keep",
        n_real_pos=int((y_real == 1).sum()),
        n_real_neg=int((y_real == 0).sum()),
        n_synthetic_pos=int(pos.sum()),
        n_synthetic_neg=int(neg.sum()),
    )
    if result.n_real_pos < min_real_positives or result.n_real_neg < 1:
        result.reason = f"not judged: {result.n_real_pos} real train+val positives (< {min_real_positives})"
        return result
    if result.n_synthetic_pos < min_synthetic or result.n_synthetic_neg < min_synthetic:
        result.reason = (
            f"not judged: {result.n_synthetic_pos} generated positives / {result.n_synthetic_neg} generated "
            f"negatives (< {min_synthetic}; negatives are other classes' images without this label)"
        )
        return result
    x = np.concatenate([syn_features[pos], syn_features[neg]])
    y = np.concatenate([np.ones(int(pos.sum())), np.zeros(int(neg.sum()))])
    scores = probe_scores(x, y, real_features[known], probe_c, seed)
    auroc, ci = patient_bootstrap_auroc(
        y_real.astype(int), scores, np.asarray(real_patients)[known], n_boot, ci_level, seed
    )
    passed = ci[0] is not None and ci[0] > min_auroc
    reason = "" if passed else f"probe AUROC interval does not clear {min_auroc}"
    return replace(result, judged=True, passed=passed, auroc=auroc, ci=ci, reason=reason)
