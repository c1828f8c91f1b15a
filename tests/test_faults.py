"""Fault injection (tests/faults.py): commands SIGKILLed at seeded random moments, resumed, and
compared byte for byte with an uninterrupted run; nothing partial ever under a final name."""

import pytest

from .faults import COMMANDS, kill_and_resume


def _check(row, kills):
    assert row["never_partial"] == kills, row
    assert row["finished"] >= 1 and row["identical"] == row["finished"], row


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_few_kills_resume_to_identical_outputs(name, tmp_path):
    _check(kill_and_resume(COMMANDS[name], tmp_path, kills=2, seed=1), 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_ten_kills_resume_to_identical_outputs(name, tmp_path):
    row = kill_and_resume(COMMANDS[name], tmp_path, kills=10, seed=0)
    _check(row, 10)
    assert row["resumed"] >= 3, row  # the kills land in the work, not only before or after it
