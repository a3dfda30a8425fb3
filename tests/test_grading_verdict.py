"""The trusted-check machinery: the wire format carries only data, the probe records what the
student's code did, and the verdict is decided from the record alone."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch

from gradeprobe.codec import WireError, pack, read_file, unpack, write_file
from gradeprobe.executor import execute
from grading.hidden import CheckFailed, as_tensor_array
from grading.records import TensorRecord
from grading.verdict import Probe, expect_unchanged, judge_checks, plan_checks, trusted


def _run(check, ns, seed=0):
    session = check.start("01_forward_process", check.__name__, seed)
    plan = unpack(*pack(*session.plan()))
    session.judge(unpack(*pack(*execute(plan, ns))))


@trusted
def double_check(p: Probe):
    x = torch.randn(3, 2, generator=p.gen(0))  # (3, 2)
    out = p.call("double", x, what="double(x)")
    yield
    got = as_tensor_array(out.value, "double(x)", shape=(3, 2))
    expect_unchanged(out, {"x": x}, "double")
    if not np.allclose(got, 2 * x.numpy()):
        raise CheckFailed("double(x) is wrong")


def test_a_correct_function_passes_and_a_wrong_one_fails():
    _run(double_check, {"double": lambda x: 2 * x})
    with pytest.raises(CheckFailed, match="double\\(x\\) is wrong"):
        _run(double_check, {"double": lambda x: 3 * x})


def test_errors_reach_the_message():
    with pytest.raises(CheckFailed, match="`double` is not defined"):
        _run(double_check, {})

    def todo(x):
        raise NotImplementedError()
    with pytest.raises(CheckFailed, match="not implemented yet"):
        _run(double_check, {"double": todo})
    with pytest.raises(CheckFailed, match="raised ZeroDivisionError"):
        _run(double_check, {"double": lambda x: 1 / 0})


def test_in_place_edits_are_seen():
    def sneaky(x):
        x.mul_(2)
        return x.clone()
    with pytest.raises(CheckFailed, match="changed its input `x` in place"):
        _run(double_check, {"double": sneaky})


def test_the_inputs_follow_the_secret_seed():
    seen = []
    _run(double_check, {"double": lambda x: seen.append(x.clone()) or 2 * x}, seed=1)
    _run(double_check, {"double": lambda x: seen.append(x.clone()) or 2 * x}, seed=2)
    assert not torch.equal(seen[0], seen[1])


def test_wrapped_building_blocks_and_global_seeds_are_recorded():
    @trusted
    def composite(p: Probe):
        out = p.call("outer", 3, what="outer(3)", wrap=("inner",), global_seed=5)
        yield
        calls = out.wrapped("inner")
        assert [c.args for c in calls] == [[3], [4]]
        assert [c.value for c in calls] == [4, 5]
        assert out.rng_changed["torch"] is True and out.rng_changed["numpy"] is False
        assert out.value == 5

    ns = {"inner": lambda v: v + 1}
    ns["outer"] = lambda v: (torch.rand(1), ns["inner"](ns["inner"](v)))[1]
    _run(composite, ns)
    state = torch.random.get_rng_state()
    _run(composite, ns)
    assert torch.equal(state, torch.random.get_rng_state())  # the notebook's own random state is kept


def test_records_are_plain_data_read_without_following_links(tmp_path):
    write_file(str(tmp_path / "records"), "q", {"steps": {}}, {"a0": np.zeros(3)})
    assert read_file("records", "q", base=str(tmp_path))[0] == {"steps": {}}
    # a link in place of the folder or the file is refused
    (tmp_path / "elsewhere").mkdir()
    write_file(str(tmp_path / "elsewhere"), "q", {"steps": {}}, {})
    os.rename(tmp_path / "records", tmp_path / "old")
    os.symlink(tmp_path / "elsewhere", tmp_path / "records")
    with pytest.raises(OSError):
        read_file("records", "q", base=str(tmp_path))
    os.remove(tmp_path / "records")
    os.rename(tmp_path / "old", tmp_path / "records")
    os.remove(tmp_path / "records" / "q.json")
    os.symlink(tmp_path / "elsewhere" / "q.json", tmp_path / "records" / "q.json")
    with pytest.raises(WireError):
        read_file("records", "q", base=str(tmp_path))
    # object arrays (pickles) never load
    buf = io.BytesIO()
    np.savez(buf, a0=np.array([object()], dtype=object))
    with pytest.raises(WireError):
        unpack(b'{"steps": {}}', buf.getvalue())


def test_a_missing_record_is_a_fail_not_a_pass(tmp_path):
    nb = {"cells": [{"cell_type": "code", "metadata": {"nbgrader": {"grade": True, "grade_id": "test_q_sample"}},
                     "source": 'import gradeprobe; gradeprobe.run("01_forward_process", "q_sample", globals())'}]}
    sessions = plan_checks(nb, str(tmp_path / "home" / "probe" / "plan"), seed=3)
    assert (tmp_path / "home" / "probe" / "plan" / "q_sample.json").is_file()
    verdicts = judge_checks(sessions, str(tmp_path), "home/probe/records")
    assert not verdicts["test_q_sample"].passed
    assert "did not run" in verdicts["test_q_sample"].message


def test_tensor_records_keep_what_the_kernel_said():
    rec = TensorRecord(np.zeros((2,), np.float64), "torch.float64")
    with pytest.raises(CheckFailed, match="float32"):
        from grading.hidden import as_array
        as_array(rec, "x", dtype="float32")
