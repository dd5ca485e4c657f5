"""Claims in an experiment's check: failures raise, declared expected failures are strict."""

import pytest

from saetools.experiments import han2023_lm_infinite, wang2022_ioi
from saetools.experiments.protocol import ClaimFailed, Claims


def test_a_failing_claim_raises_with_its_measured_number():
    claims = Claims()
    claims("holds", True, "1 > 0")
    with pytest.raises(ClaimFailed, match="measured 0.2"):
        claims("fails", False, "measured 0.2")
    assert claims.table().status.tolist() == ["holds", "fails"]


def test_an_expected_failure_is_recorded_and_must_keep_failing():
    claims = Claims({"sinks": "no sink formed"})
    claims("sinks", False, "ratio 1.00")
    row = claims.table().iloc[0]
    assert (row.status, row.measured, row.why) == ("expected failure", "ratio 1.00", "no sink formed")
    with pytest.raises(ClaimFailed, match="remove it from the expected failures"):
        claims("sinks", True, "ratio 1.20")


@pytest.mark.parametrize("module", [wang2022_ioi, han2023_lm_infinite], ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_bundled_expected_failures_give_a_reason(module):
    for key, why in module.BUNDLED_EXPECTED_FAILURES.items():
        assert key and len(why) > 40, (key, why)
