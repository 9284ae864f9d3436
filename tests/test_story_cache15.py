"""Issue 15: the story world's splits are kept on disk once drawn, and a bad cache file is redrawn."""

from __future__ import annotations

import gzip

from archplay.models.story import cache, make_splits


def _same(a, b) -> bool:
    return all([vars(x) for x in a[k]] == [vars(y) for y in b[k]] for k in a)


def test_the_splits_come_back_equal_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHPLAY_CACHE", str(tmp_path))
    first = make_splits(seed=3, n_train=1000, n_valid=20, n_test=20)
    files = list(tmp_path.glob("world-*.json.gz"))
    assert len(files) == 1
    again = make_splits(seed=3, n_train=1000, n_valid=20, n_test=20)
    assert _same(first, again) and again["train"][0].text == first["train"][0].text
    assert isinstance(again["train"][0].sentences[0], tuple)
    files[0].write_bytes(gzip.compress(b'{"train": [[1, 2]]}'))  # a file that does not hold the splits
    assert _same(make_splits(seed=3, n_train=1000, n_valid=20, n_test=20), first)
    files[0].write_bytes(b"not gzip")
    assert _same(make_splits(seed=3, n_train=1000, n_valid=20, n_test=20), first)
    make_splits(seed=4, n_train=1000, n_valid=20, n_test=20)
    assert len(list(tmp_path.glob("world-*.json.gz"))) == 2  # other arguments, another file


def test_small_splits_and_an_unusable_folder_skip_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHPLAY_CACHE", str(tmp_path))
    make_splits(seed=0, n_train=50, n_valid=5, n_test=5)
    assert not list(tmp_path.iterdir())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("ARCHPLAY_CACHE", str(blocker / "sub"))  # cannot be created: drawn, not kept
    assert len(make_splits(seed=0, n_train=1000, n_valid=1, n_test=1)["train"]) == 1000
    monkeypatch.setenv("ARCHPLAY_CACHE", "off")
    assert cache.folder() is None
