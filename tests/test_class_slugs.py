"""The two class-name slugs keep the file names already on disk (generated images, phantom sheets, report files)."""

from synth.taxonomy import ALL_CLASSES, class_slug, report_class_slug


def test_generated_image_and_report_slugs_keep_their_names():
    assert class_slug("Round(ed) Atelectasis") == "round-ed-atelectasis"
    assert report_class_slug("Round(ed) Atelectasis") == "round-ed--atelectasis"
    assert (
        class_slug("Calcification of the Aorta")
        == report_class_slug("Calcification of the Aorta")
        == "calcification-of-the-aorta"
    )
    assert [c for c in ALL_CLASSES if class_slug(c) != report_class_slug(c)] == ["Round(ed) Atelectasis"]
    assert len({class_slug(c) for c in ALL_CLASSES}) == len(ALL_CLASSES)  # one folder per class
