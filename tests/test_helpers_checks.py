"""The visible tests' assertions name the likely cause when a known mistake's value comes back."""
import pytest
import torch

from helpers.checks import (VisibleTestFailed, expect, expect_close, expect_dtype,
                            expect_shape)


def test_a_matching_value_passes_and_a_wrong_one_names_its_cause():
    expect_close(torch.tensor([1.0, 2.0]), [1.0, 2.0], name="f(x)")
    with pytest.raises(VisibleTestFailed, match=r"f\(x\): expected \[1, 2\], got \[1, 4\]. "
                                                 r"Likely cause: squared"):
        expect_close(torch.tensor([1.0, 4.0]), [1.0, 2.0], name="f(x)",
                     causes={"not this one": [0.0, 0.0], "squared": [1.0, 4.0]})


def test_an_unknown_wrong_value_says_expected_and_got_without_a_guess():
    with pytest.raises(VisibleTestFailed) as err:
        expect_close([3.0], [1.0], name="g", causes={"squared": [1.0]})
    assert "Likely cause" not in str(err.value) and "got [3]" in str(err.value)


def test_nan_is_named_as_such():
    with pytest.raises(VisibleTestFailed, match="NaN or inf"):
        expect_close(torch.tensor([float("nan")]), [1.0], name="h")


def test_shape_dtype_and_condition_messages():
    with pytest.raises(VisibleTestFailed, match="another order"):
        expect_shape(torch.zeros(2, 3), (3, 2), name="x")
    with pytest.raises(VisibleTestFailed, match="view\\(-1, 1, 1, 1\\)"):
        expect_shape(torch.zeros(4), (4, 1, 1, 1), name="x")
    expect_shape(torch.zeros(3, 2), (3, 2), name="x")
    with pytest.raises(VisibleTestFailed, match="cast back"):
        expect_dtype(torch.zeros(2, dtype=torch.float64), torch.float32, name="x")
    expect_dtype(torch.zeros(2), torch.float32, name="x")
    with pytest.raises(VisibleTestFailed, match="because"):
        expect(False, "because")
