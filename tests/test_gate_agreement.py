"""The gate-vs-oracle check of issue #18: Spearman >= 0.6, unfaithful sets dropped, faithful sets kept."""

from synth.ablation.results import gate_agreement


def _results(table):
    """table: one "class group oracle-val-AP fidelity gate-AUROC kept|dropped" string per class."""
    rows = [
        (c, g, float(ap), float(fid), float(auroc), kept == "kept")
        for c, g, ap, fid, auroc, kept in map(str.split, table)
    ]
    return {
        "groups": {r[0]: r[1] for r in rows},
        "fidelity": {"classes": {r[0]: {"oracle_val_ap": r[2], "generated": r[3]} for r in rows}},
        "filter": {"classes": {r[0]: {"transfer": {"judged": True, "auroc": r[4], "passed": r[5]}} for r in rows}},
    }


def test_agreeing_gate_meets_the_bar():
    g = gate_agreement(
        _results(["A tail 0.9 0.05 0.52 dropped", "B tail 0.9 0.3 0.7 kept", "C tail 0.9 0.8 0.9 kept"])
    )
    assert g.spearman == 1.0 and g.met and not g.unfaithful_kept and not g.faithful_dropped


def test_disagreements_are_named_and_unjudgeable_classes_left_out():
    g = gate_agreement(
        _results(
            [
                "A tail 0.9 0.05 0.8 kept",
                "B tail 0.9 0.6 0.55 dropped",
                "C tail 0.9 0.3 0.7 kept",
                "D tail 0.2 0.9 0.5 dropped",
                "E head 0.9 0.9 0.5 dropped",
            ]
        )
    )
    assert [r[0] for r in g.rows] == ["A", "B", "C"]
    assert g.unfaithful_kept == ["A"] and g.faithful_dropped == ["B"] and not g.met
    assert g.spearman < 0


def test_too_few_classes_cannot_meet_the_bar():
    g = gate_agreement(_results(["A tail 0.9 0.05 0.52 dropped", "B tail 0.9 0.8 0.9 kept"]))
    assert g.spearman is None and not g.met
    assert gate_agreement({"groups": {}}) is None
