"""Claims tables: a failing claim raises with its number, declared expected failures are strict,
every headline claim gets a row, untestable claims say why, and a displayed table carries its
rows for claims.csv."""

import pytest

from saetools.experiments import (
    engels2024_dark_matter,
    han2023_lm_infinite,
    lee2025_top_afa,
    makelov2024_checks,
    mudide2024_switch_sae,
    shrinkage,
    wang2022_ioi,
)
from saetools.experiments.protocol import (
    CLAIM_COLUMNS,
    CLAIMS_MIMETYPE,
    ClaimFailed,
    Claims,
    Headline,
    at_matched_l0,
    short_training,
    spread,
)

HEADLINES = {"a": Headline("A holds", "0.9"), "b": Headline("B holds", "2x")}


def test_a_failing_claim_raises_with_its_measured_number():
    claims = Claims()
    claims("holds", True, "1 > 0", paper="1")
    with pytest.raises(ClaimFailed, match="measured 0.2"):
        claims("fails", False, "measured 0.2")
    t = claims.table()
    assert list(t.columns) == CLAIM_COLUMNS
    assert t.verdict.tolist() == ["reproduced", "not reproduced"] and t.paper.tolist() == ["1", ""]


def test_an_expected_failure_is_recorded_and_must_keep_failing():
    claims = Claims({"b": "no sink formed"}, headlines=HEADLINES)
    claims("b", False, "ratio 1.00")
    claims.untestable("a", "the run is too short", "0.5")
    t = claims.table()
    assert t.loc["b"].tolist() == ["B holds", "2x", "ratio 1.00", "not reproduced", "no sink formed"]
    assert t.loc["a"].tolist() == ["A holds", "0.9", "0.5", "not testable at this profile", "the run is too short"]
    with pytest.raises(ClaimFailed, match="remove it from the expected failures"):
        Claims({"b": "no sink formed"}, headlines=HEADLINES)("b", True, "ratio 1.20")


def test_no_headline_claim_is_dropped_quietly():
    claims = Claims(headlines=HEADLINES)
    claims("a", True, "0.95")
    with pytest.raises(ValueError, match=r"left out headline claims \['b'\]"):
        claims.table()
    claims = Claims({"typo": "why"})
    claims("x", True, "1")
    with pytest.raises(ValueError, match="expected failures \\['typo'\\] name no claim"):
        claims.table()
    with pytest.raises(ValueError, match="recorded twice"):
        claims("x", True, "1")


def test_a_displayed_table_carries_its_rows():
    claims = Claims(headlines=HEADLINES)
    claims("a", True, "0.95")
    claims.untestable("b", "short")
    rows = claims.table()._repr_mimebundle_()[CLAIMS_MIMETYPE]["rows"]
    assert [r["key"] for r in rows] == ["a", "b"] and rows[0]["claim"] == "A holds"


def test_matched_l0_interpolates_and_never_extrapolates():
    assert at_matched_l0([10, 40], [0.4, 0.2], 20) == pytest.approx(0.3)  # halfway in log L0
    assert at_matched_l0([40, 10], [0.2, 0.4], 20) == pytest.approx(0.3)
    assert at_matched_l0([10, 40], [0.4, 0.2], 50) != at_matched_l0([10, 40], [0.4, 0.2], 50)  # NaN outside
    assert short_training(999) and short_training(1000) is None
    assert spread([1.0]) == "1.000" and spread([1.0, 2.0, 3.0]) == "2.000 ± 1.000 (3 seeds)"


@pytest.mark.parametrize("module", [wang2022_ioi, han2023_lm_infinite, engels2024_dark_matter],
                         ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_bundled_expected_failures_give_a_reason(module):
    for key, why in module.BUNDLED_EXPECTED_FAILURES.items():
        assert len(why) > 40, (key, why)


def test_the_papers_headline_claims_are_all_listed():
    modules = (lee2025_top_afa, mudide2024_switch_sae, engels2024_dark_matter, shrinkage, makelov2024_checks,
               han2023_lm_infinite, wang2022_ioi)
    n = sum(len(m.HEADLINES) for m in modules)
    assert n >= 26, n
    for m in modules:
        for key, h in m.HEADLINES.items():
            assert h.claim and h.paper, (m.__name__, key)


def test_seeds_run_apart_and_a_claim_must_hold_on_every_seed():
    import dataclasses

    from saetools.experiments.protocol import check_over_seeds, run_seeds

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        seed: int = 0
        n_seeds: int = 3

    @dataclasses.dataclass
    class Res:
        config: Cfg
        value: float
        seed_results: list = dataclasses.field(default_factory=list)

    seen = []

    def run_one(model, cfg):
        seen.append(cfg)
        return Res(cfg, {0: 0.9, 1000: 0.8, 2000: 0.4}[cfg.seed])

    result = run_seeds(run_one, None, Cfg())
    assert [c.seed for c in seen] == [0, 1000, 2000] and all(c.n_seeds == 1 for c in seen)
    assert result.config == Cfg() and len(result.seed_results) == 2

    def claims_of(r, claims):
        claims("a", r.value > 0.3, f"value {r.value}", value=r.value)
        claims("b", r.value > 0.5, f"value {r.value}", value=r.value)

    with pytest.raises(ClaimFailed, match="holds on 2 of 3"):
        check_over_seeds(result, claims_of, expected_failures=None, headlines=HEADLINES)
    t = check_over_seeds(result, claims_of, expected_failures={"b": "one seed is short of it"}, headlines=HEADLINES)
    assert t.verdict.tolist() == ["reproduced", "not reproduced"]
    assert "value 0.9 (first seed) | over 3 seeds: 0.7 ± 0.26, holds on 3 of 3" == t.loc["a", "run"]
    one = check_over_seeds(Res(Cfg(n_seeds=1), 0.9), claims_of, expected_failures=None, headlines=HEADLINES)
    assert one.loc["a", "run"] == "value 0.9"


def test_known_failures_are_per_bundled_model_and_profile():
    from types import SimpleNamespace

    from saetools.experiments.protocol import bundled_expected_failures

    module = SimpleNamespace(BUNDLED_EXPECTED_FAILURES={"a": "always"}, BUNDLED_EXPECTED_FAILURES_AT={"cpu": {"b": "at cpu"}})
    assert bundled_expected_failures(module, "tiny-ioi", "smoke") == {"a": "always"}
    assert bundled_expected_failures(module, "tiny-rotary", "cpu") == {"a": "always", "b": "at cpu"}
    assert bundled_expected_failures(module, "gpt2", "cpu") is None  # every claim must hold or fail loudly
    assert bundled_expected_failures(SimpleNamespace(), "tiny-ioi", "cpu") == {}
