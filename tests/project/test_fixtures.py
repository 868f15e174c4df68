"""The repository's own test data: present, small, described, and the only real data tests read."""
from __future__ import annotations

import re

import pytest

from conftest import DEV_SHARED, EXTENDED_DATA, FORMATS, NIH_SAMPLE, TEST_DATA, needs_extended
from cxrcore.data.imageio import read_image
from cxrcore.data.readers import read_dataset


def test_fixture_folder_is_small_and_every_file_is_described():
    files = [p for p in TEST_DATA.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 8 * 2**20
    readme = (TEST_DATA / "README.md").read_text()
    for p in FORMATS.iterdir():
        assert p.name in readme, f"{p.name} has no provenance line in tests/data/README.md"
    for name in ("Data_Entry_2017_sample.csv", "BBox_List_2017_sample.csv"):
        assert name in readme and (NIH_SAMPLE / name).is_file()


def test_nih_fixture_is_the_real_sample():
    ix = read_dataset(NIH_SAMPLE)
    assert len(ix) == 250 and ix.frame["patient_id"].nunique() == 172
    assert len(ix.boxes) == 24
    assert not any(re.search(r"missing", n) for n in ix.notes)


def test_tests_cannot_read_the_development_machines_shared_folder():
    # conftest's audit hook: on a user's clone ../shared does not exist, so no test may depend on it
    if EXTENDED_DATA is not None:
        pytest.skip("CXR_EXTENDED_DATA is set: extended tests may read it")
    with pytest.raises(PermissionError, match="never ../shared"):
        open(f"{DEV_SHARED}/data/README.md")


@needs_extended
def test_extended_full_size_sample_reads_like_the_fixture():
    full = read_dataset(EXTENDED_DATA / "nih-sample")
    small = read_dataset(NIH_SAMPLE)
    assert full.frame["image_id"].tolist() == small.frame["image_id"].tolist()
    sizes = {read_image(p).original_shape for p in full.frame["path"]}
    assert sizes == {(512, 512), (1024, 1024)}
