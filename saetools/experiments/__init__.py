"""One module per paper reproduction: ``Config``, ``run(model, cfg) -> Result``, ``figures``,
``check_model``, ``check`` (:mod:`saetools.experiments.protocol`)."""

EXPERIMENTS: tuple[str, ...] = (
    "quickstart", "wang2022_ioi", "shrinkage", "makelov2024_supervised_dictionaries", "lee2025_top_afa",
    "mudide2024_switch_sae", "engels2024_dark_matter", "han2023_lm_infinite",
)
"""The experiment modules, in the order of the notebooks (00 to 07)."""
