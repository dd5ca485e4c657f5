"""Diagnostics that take any dictionary (an SAE, a supervised dictionary, a decoder matrix).

Import the submodule you need:

* :mod:`saetools.diagnostics.geometry` -- decoder geometry: nearest-neighbour cosines,
  duplicate latents, inter-expert similarity (Mudide et al. 2024);
* :mod:`saetools.diagnostics.dark_matter` -- linear / nonlinear SAE error (Engels et al. 2024);
* :mod:`saetools.dictionaries.occlusion` -- occlusion and over-splitting (Makelov et al. 2024).
"""
