import numpy as np

from foscu.labels import LABELS, NUM_CLASSES, from_one_hot, one_hot, to_task


def test_label_map_is_the_papers():
    assert LABELS == {"background": 0, "liver": 1, "portal_vein": 2, "hepatic_vein": 3, "tumor": 4}
    assert NUM_CLASSES == 5


def test_one_hot_round_trip():
    label = np.random.default_rng(0).integers(0, 5, size=(4, 5, 6)).astype(np.uint8)
    oh = one_hot(label)
    assert oh.shape == (5, 4, 5, 6) and np.all(oh.sum(0) == 1)
    assert np.array_equal(from_one_hot(oh), label)


def test_liver_only_view():
    label = np.array([0, 1, 2, 3, 4], np.uint8)
    assert to_task(label, "binary").tolist() == [0, 1, 1, 1, 1]
    assert to_task(label, "multiclass").tolist() == [0, 1, 2, 3, 4]
