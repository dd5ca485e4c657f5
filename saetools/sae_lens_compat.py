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
from sae_lens.saes.topk_sae import TopK
from sae_lens.saes.topk_sae import _sparse_matmul_nd as sparse_matmul_nd

__all__ = [
    "SAE_CLASS_REGISTRY",
    "SAE_TRAINING_CLASS_REGISTRY",
    "SAEWrapper",
    "disable_sae_hooks",
    "get_deep_attr",
    "set_deep_attr",
    "sparse_matmul_nd",
    "use_mappable_topk",
]


def use_mappable_topk(sae) -> None:
    """Give ``sae`` (in place) a TopK activation that ``torch.vmap`` maps natively: sae-lens's
    dense ``TopK`` writes its output with an in-place ``scatter_``, which ``vmap`` runs one SAE
    at a time; this one computes the same values with the out-of-place ``scatter``. The
    ``activation_fn`` attribute it replaces is set by sae-lens's ``SAE.__init__``."""
    import torch

    act = getattr(sae, "activation_fn", None)
    if type(act) is TopK and not act.use_sparse_activations:
        k = act.k

        class _MappableTopK(torch.nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                values, indices = torch.topk(x, k=k, dim=-1, sorted=False)
                return torch.zeros_like(x).scatter(-1, indices, values.relu())

        sae.activation_fn = _MappableTopK()
