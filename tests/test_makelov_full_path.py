"""The GPT-2 ("full") profile of the Makelov experiment, run end to end on a random model with
GPT-2's head layout (12 layers x 12 heads) and the bundled tokenizer: every path that only the
GPU reproduction takes -- the Wang et al. circuit, ``q`` nodes, no io_mover search -- executes
here, at toy sizes. The numbers are meaningless (random weights); the structure is checked."""

from __future__ import annotations

from dataclasses import replace

import pytest

from saetools import circuits
from saetools.dictionaries import IOISAEConfig, cross_sections
from saetools.dictionaries.occlusion import ToyOcclusionConfig
from saetools.experiments import makelov2024_supervised_dictionaries as makelov
from tests.conftest import random_model_with_bundled_tokenizer


@pytest.mark.slow
def test_full_profile_runs_on_a_gpt2_head_layout():
    model = random_model_with_bundled_tokenizer(n_layers=12, n_heads=12, d_head=4, d_model=48, d_mlp=96)
    cfg = replace(makelov.Config.profile("full"), n_names=16, n_train=400, n_eval=8,
                  saes=IOISAEConfig(epochs=1, batch_size=64, expansion=1), ns_aware=(1,), ns_greedy=(2,),
                  toy=ToyOcclusionConfig(ratios=(0.5, 2.0), n_train=256, n_eval=128, epochs=1), n_playground=2)
    r = makelov.run(model, cfg)
    sections = cross_sections(circuits.WANG_2022_GPT2_CIRCUIT, kinds=("z", "q"))
    assert r.circuit is circuits.WANG_2022_GPT2_CIRCUIT and [s.name for s in r.sections] == [s.name for s in sections]
    nodes = {n.label for s in sections for n in s.nodes}
    assert {"L9H9.z@END", "L9H9.q@END", "L10H7.z@END"} <= nodes
    assert set(r.residuals.node) == nodes and set(r.meta["nodes"]) == nodes
    assert list(r.whole_circuit.section.unique()) == [s.name for s in sections]
    sup = r.approximation[r.approximation.dictionary == "supervised"].set_index("nodes").sufficiency
    for name, g in r.whole_circuit.groupby("section"):  # every section is SAE-scored here: rows reused
        assert sorted(g.method) == ["arithmetic", "none", "patch", "same attributes"], name
        assert (g.sufficiency == sup[g.nodes.iloc[0]]).all(), name
    for name, g in r.edits.groupby("section"):
        assert {"none", "patch", "supervised", *IOISAEConfig().variants} <= set(g.dictionary), name
        assert set(g.method[g.dictionary == "patch"]) == {"patch", "same attributes"}, name
    assert set(r.approximation.dictionary) >= {"supervised", "supervised independent", *IOISAEConfig().variants}
    assert r.playground.prompt.nunique() == 2
