"""The uint8 training cache: contents equal the preprocessing, resumable, keyed by preprocessing, failures recorded."""
from __future__ import annotations


import numpy as np
import pytest

from cxrcore.data.cache import build_cache
from cxrcore.data.imageio import read_image
from cxrcore.data.preprocess import Preprocess
from cxrcore.data.readers import read_dataset

from conftest import NIH_SAMPLE


@pytest.fixture
def small_nih(tmp_path):
    ix = read_dataset(NIH_SAMPLE)
    return ix.subset(np.arange(len(ix)) < 40)


class Interrupt(Exception):
    pass


def test_cache_holds_the_preprocessed_images(small_nih, tmp_path):
    prep = Preprocess(size=64)
    cache = build_cache(small_nih, prep, workers=1, root=tmp_path)
    assert cache.array.shape == (40, 64, 64) and not cache.failed
    for i in (0, 17, 39):
        expected = prep.square(read_image(small_nih.frame["path"][i]).pixels)
        assert np.array_equal(cache.array[i], expected)
    # another preprocessing is another cache
    other = build_cache(small_nih, Preprocess(size=64, fit="crop"), workers=1, root=tmp_path)
    assert other.folder != cache.folder


def test_interrupted_build_resumes(small_nih, tmp_path):
    prep = Preprocess(size=48)
    seen = []

    def stop_after_30(done, total):
        seen.append(done)
        if done == 30:
            raise Interrupt

    with pytest.raises(Interrupt):
        build_cache(small_nih, prep, progress=stop_after_30, workers=1, root=tmp_path)
    folder = next(p for p in tmp_path.iterdir() if p.is_dir())
    assert not (folder / "meta.json").exists()  # not marked complete
    done = []
    cache = build_cache(small_nih, prep, progress=lambda d, n: done.append(d), workers=1, root=tmp_path)
    assert done[0] == 30, "the second build must start where the first stopped"
    assert done[-1] == 40 and (folder / "meta.json").exists()
    expected = prep.square(read_image(small_nih.frame["path"][35]).pixels)
    assert np.array_equal(cache.array[35], expected)


def test_unreadable_images_are_recorded(small_nih, tmp_path):
    bad_dir = tmp_path / "imgs"
    bad_dir.mkdir()
    frame = small_nih.frame.copy()
    bad = bad_dir / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    frame.loc[3, "path"] = str(bad)
    ix = type(small_nih)(small_nih.root, small_nih.format, frame, small_nih.labels)
    cache = build_cache(ix, Preprocess(size=32), workers=1, root=tmp_path / "c")
    assert list(cache.failed) == [3] and "broken.png" in cache.failed[3]
    assert cache.array[3].max() == 0
