"""What every experiment module shares: named profiles for its ``Config``, and figures that
a notebook displays exactly once.

Each module in :mod:`saetools.experiments` follows one protocol:

* ``Config`` -- a frozen dataclass; ``Config.profile(name)`` gives a named configuration
  (``"smoke"``: the bundled model on a CPU in about a minute; ``"full"``: the paper's scale, on a
  GPU), built by :class:`Profiles` from the fields each profile changes;
* ``run(model, cfg) -> Result`` -- every measurement, as data;
* ``figures(result) -> dict[str, Figure]`` -- matplotlib figures, drawn but not displayed;
* ``check(result)`` -- asserts the claims the profile can test; every notebook ends with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

__all__ = ["Profiles", "subplots"]


class Profiles:
    """Mixin for an experiment's ``Config``: ``PROFILES`` maps a profile name to the fields it
    changes from the defaults, and :meth:`profile` builds that configuration."""

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {"smoke": {}}

    @classmethod
    def profile(cls, name: str):
        """The configuration called ``name`` (one of ``PROFILES``)."""
        if name not in cls.PROFILES:
            raise ValueError(
                f"unknown profile {name!r} for {cls.__module__}.{cls.__qualname__}: "
                f"use one of {sorted(cls.PROFILES)}"
            )
        return cls(**cls.PROFILES[name])


def subplots(*args, **kwargs) -> tuple[Figure, Any]:
    """``plt.subplots`` for the figures an experiment returns: the figure is closed to pyplot,
    so Jupyter shows it only where a notebook displays it (never a second time at cell end)."""
    fig, axes = plt.subplots(*args, **kwargs)
    plt.close(fig)
    return fig, axes
