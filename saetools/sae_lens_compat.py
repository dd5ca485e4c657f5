"""Every name saetools takes from sae-lens's internals, in one place.

sae-lens keeps these out of its public API (a leading underscore, or a module it does not
document), so a sae-lens release may move them. Importing them here, and only here, makes such
a move a one-line fix and lets the test suite check that no other module reaches inside.
Tested against the sae-lens version pinned in ``constraints/ci.txt``.
"""

from sae_lens.analysis.hooked_sae_transformer import (
    _SAEWrapper as SAEWrapper,
)
from sae_lens.analysis.hooked_sae_transformer import (
    get_deep_attr,
    set_deep_attr,
)
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import _disable_hooks as disable_sae_hooks
from sae_lens.saes.topk_sae import _sparse_matmul_nd as sparse_matmul_nd

__all__ = [
    "SAE_CLASS_REGISTRY",
    "SAE_TRAINING_CLASS_REGISTRY",
    "SAEWrapper",
    "disable_sae_hooks",
    "get_deep_attr",
    "set_deep_attr",
    "sparse_matmul_nd",
]
