"""k-fold splits: nnU-Net reproduction, determinism, partition property, file validation."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segbench.errors import ConfigError
from segbench.splits import load_splits, make_splits, resolve_splits, save_splits

TASK02_IDS = [
    f"la_{i:03d}" for i in (3, 4, 5, 7, 9, 10, 11, 14, 16, 17, 18, 19, 20, 21, 22, 23, 24, 26, 29, 30)
]  # fmt: skip


def test_nnunet_fold0_matches_published_task02_split():
    # Reversed input: the result must not depend on listing order.
    splits = make_splits(TASK02_IDS[::-1], folds=5, method="nnunet")
    assert splits[0]["val"] == ["la_007", "la_016", "la_021", "la_024"]
    assert len(splits[0]["train"]) == 16


def test_nnunet_ignores_seed():
    assert make_splits(TASK02_IDS, method="nnunet", seed=1) == make_splits(TASK02_IDS, method="nnunet", seed=99)


def test_nnunet_matches_scikit_learn_when_available():
    model_selection = pytest.importorskip("sklearn.model_selection")
    for n, k in [(20, 5), (23, 5), (7, 3), (10, 10)]:
        ids = [f"case_{i:02d}" for i in range(n)]
        expected = [
            {"train": [ids[i] for i in tr], "val": [ids[i] for i in te]}
            for tr, te in model_selection.KFold(n_splits=k, shuffle=True, random_state=12345).split(ids)
        ]
        assert make_splits(ids, folds=k, method="nnunet") == expected


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 40), k=st.integers(2, 10), seed=st.integers(0, 2**31 - 1))
def test_kfold_is_a_partition_with_sklearn_fold_sizes(n, k, seed):
    if k > n:
        return
    ids = [f"c{i}" for i in range(n)]
    splits = make_splits(ids, folds=k, seed=seed)
    assert len(splits) == k
    vals = [v for fold in splits for v in fold["val"]]
    assert sorted(vals) == sorted(ids)  # each case validated exactly once
    for fold in splits:
        assert sorted(fold["train"] + fold["val"]) == sorted(ids)
        assert fold["train"] == sorted(fold["train"]) and fold["val"] == sorted(fold["val"])
    sizes = [len(fold["val"]) for fold in splits]
    assert sizes == [n // k + 1] * (n % k) + [n // k] * (k - n % k)


def test_kfold_deterministic_per_seed_and_seed_matters():
    a = make_splits(TASK02_IDS, folds=5, seed=3)
    assert a == make_splits(list(reversed(TASK02_IDS)), folds=5, seed=3)
    assert a != make_splits(TASK02_IDS, folds=5, seed=4)


@pytest.mark.parametrize(
    "ids, folds, match",
    [
        (["a", "b"], 3, "at least 3 cases"),
        (["a", "b", "c"], 1, "at least 2"),
        (["a", "a", "b"], 2, "duplicate"),
    ],
)
def test_make_splits_rejects_bad_input(ids, folds, match):
    with pytest.raises(ConfigError, match=match):
        make_splits(ids, folds=folds)


def test_make_splits_rejects_unknown_method():
    with pytest.raises(ConfigError, match="unknown"):
        make_splits(TASK02_IDS, method="stratified")


def test_save_load_round_trip_in_nnunet_format(tmp_path):
    splits = make_splits(TASK02_IDS, folds=4, seed=0)
    path = save_splits(tmp_path / "splits.json", splits)
    raw = json.loads(path.read_text())
    assert isinstance(raw, list) and set(raw[0]) == {"train", "val"}
    assert load_splits(path, case_ids=TASK02_IDS) == splits
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file


def _write(tmp_path, obj):
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps(obj))
    return path


@pytest.mark.parametrize(
    "obj, match",
    [
        ([{"train": ["a", "b"], "val": ["c"]}, {"train": ["c", "b"], "val": ["a"]}], "never validates b"),
        ([{"train": ["b"], "val": ["a"]}, {"train": ["b"], "val": ["a", "b"]}], "both train and val|more than one"),
        ([{"train": ["b", "c"], "val": ["a"]}, {"train": ["c"], "val": ["b", "a"]}], "more than one fold"),
        ([{"train": ["b"], "val": ["a", "a"]}, {"train": ["a"], "val": ["b"]}], "duplicate"),
        ([{"train": ["b"], "val": ["a"]}], "at least 2"),
        ({"train": ["b"], "val": ["a"]}, "at least 2"),
        ([{"train": ["b"], "val": ["a"]}, {"train": ["a"]}], "exactly the keys"),
        ([{"train": ["b"], "val": ["a"]}, {"train": ["a"], "val": []}], "non-empty list"),
    ],
)
def test_load_rejects_inconsistent_files_naming_the_file(tmp_path, obj, match):
    path = _write(tmp_path, obj)
    with pytest.raises(ConfigError, match=match) as info:
        load_splits(path)
    assert str(path) in str(info.value)


def test_load_checks_against_dataset_case_ids(tmp_path):
    path = _write(tmp_path, [{"train": ["b"], "val": ["a"]}, {"train": ["a"], "val": ["b"]}])
    assert load_splits(path, case_ids=["a", "b"])[1]["val"] == ["b"]
    with pytest.raises(ConfigError, match=r"not in the dataset \(b\)"):
        load_splits(path, case_ids=["a", "c"])
    with pytest.raises(ConfigError, match=r"leaves out dataset cases \(c\)"):
        load_splits(path, case_ids=["a", "b", "c"])


def test_load_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_splits(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(ConfigError, match="not readable JSON"):
        load_splits(bad)


def test_resolve_splits_methods_and_files(tmp_path, caplog):
    assert resolve_splits("nnunet", TASK02_IDS, folds=5, seed=0)[0]["val"] == ["la_007", "la_016", "la_021", "la_024"]
    assert resolve_splits("kfold", TASK02_IDS, folds=5, seed=7) == make_splits(TASK02_IDS, folds=5, seed=7)
    path = save_splits(tmp_path / "s.json", make_splits(TASK02_IDS, folds=3, seed=1))
    with caplog.at_level(logging.WARNING, logger="segbench.splits"):
        assert len(resolve_splits(str(path), TASK02_IDS, folds=5, seed=0)) == 3
    assert "3 folds" in caplog.text
    with pytest.raises(ConfigError, match="--splits"):
        resolve_splits(str(tmp_path / "missing.json"), TASK02_IDS, folds=5, seed=0)


def test_make_splits_accepts_numpy_strings():
    # Case ids often come out of numpy/pandas; the JSON must still hold plain str.
    splits = make_splits(np.array(TASK02_IDS), folds=2)
    assert all(type(i) is str for fold in splits for i in fold["val"])
