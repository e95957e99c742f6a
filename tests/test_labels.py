import numpy as np
import pytest
import torch

from foscu.errors import InputError
from foscu.labels import LABELS, NUM_CLASSES, check_task, liver_only, to_task


def test_label_map_is_the_papers():
    assert LABELS == {"background": 0, "liver": 1, "portal_vein": 2, "hepatic_vein": 3, "tumor": 4}
    assert NUM_CLASSES == 5


def test_liver_only_view():
    label = np.array([0, 1, 2, 3, 4], np.uint8)
    assert to_task(label, "binary").tolist() == [0, 1, 1, 1, 1]
    assert to_task(label, "multiclass").tolist() == [0, 1, 2, 3, 4]


def test_liver_only_keeps_the_kind_and_dtype():
    array = liver_only(np.array([0, 2, 4], np.int16))
    assert array.dtype == np.int16 and array.tolist() == [0, 1, 1]
    tensor = liver_only(torch.tensor([[0.0, 3.0, 1.0]]))
    assert tensor.dtype == torch.float32 and tensor.tolist() == [[0.0, 1.0, 1.0]]


def test_check_task_names_the_option():
    assert check_task("binary") == "binary"
    with pytest.raises(InputError, match="--task: expected binary or multiclass, got 'liver'"):
        check_task("liver")
