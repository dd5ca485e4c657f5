"""Token rows to collect activations from: the bundled corpus, or a Hugging Face text dataset.

Both sources return the same type, :class:`TokenRows`: token ids ``[row, pos]`` and a mask
that is False at BOS and padding positions (pass it as ``mask=`` to
:func:`saetools.activations.collect_activations`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from tqdm.auto import tqdm

from saetools.models.corpus import generate_documents, pack_documents
from saetools.models.loading import hub_reachable

__all__ = ["DatasetUnavailableError", "TokenRows", "corpus_tokens", "dataset_tokens"]


class TokenRows(NamedTuple):
    """Rows of token ids and which of their positions hold text (unpacks as ``tokens, keep``)."""

    tokens: Int[Tensor, "row pos"]
    """Token ids ``[row, pos]``; every row starts with BOS."""
    keep: Bool[Tensor, "row pos"]
    """False at BOS and padding positions."""


def corpus_tokens(model, n_documents: int, *, seed: int, context_size: int | None = None) -> TokenRows:
    """Rows of the bundled corpus (:mod:`saetools.models.corpus`) packed as the model was trained:
    ``BOS d1 BOS d2 ...``, padded with BOS, ``context_size`` tokens long (default and at most
    ``model.cfg.n_ctx``; a document longer than a row is left out)."""
    if model.tokenizer is None:
        raise ValueError("corpus_tokens needs a model with a tokenizer (e.g. load_model('tiny-ioi'))")
    bos = model.tokenizer.bos_token_id
    ids = model.tokenizer(generate_documents(n_documents, seed=seed), add_special_tokens=False)["input_ids"]
    if context_size is not None and context_size < 2:
        raise ValueError(f"context_size must be >= 2 (BOS and a token), got {context_size}")
    n_ctx = model.cfg.n_ctx if context_size is None else min(context_size, model.cfg.n_ctx)
    tokens, _ = pack_documents(ids, n_ctx=n_ctx, bos=bos)
    return TokenRows(tokens, tokens != bos)


class DatasetUnavailableError(RuntimeError):
    """A Hugging Face dataset cannot be loaded (no network and nothing cached)."""


def _open_dataset(name: str, split: str):
    """Stream ``name`` from the hub, or offline from the ``datasets`` cache (what an earlier
    ``load_dataset(name)`` left there)."""
    import datasets.config
    from datasets import load_dataset

    online = hub_reachable()
    saved = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = saved or not online
    try:
        return load_dataset(name, split=split, streaming=True)
    except (ConnectionError, FileNotFoundError, ValueError) as err:
        if online:
            raise
        raise DatasetUnavailableError(
            f"cannot load dataset {name!r}: the Hugging Face hub is unreachable and the dataset is not in "
            f"the local datasets cache ({datasets.config.HF_DATASETS_CACHE}). Load it once with network "
            "access, or offline use saetools.models.text.corpus_tokens(model, ...) (the bundled corpus) or "
            "an IOI distribution (saetools.tasks.ioi)."
        ) from err
    finally:
        datasets.config.HF_HUB_OFFLINE = saved


def dataset_tokens(
    model,
    dataset,
    *,
    n_rows: int,
    context_size: int | None = None,
    column: str = "text",
    split: str = "train",
) -> TokenRows:
    """Token rows from a Hugging Face text dataset, packed as ``BOS + context_size - 1`` tokens
    of the documents' concatenation (each document ends with EOS).

    Args:
        model: a TransformerLens model with a tokenizer.
        dataset: a dataset name on the hub (e.g. ``"NeelNanda/pile-10k"``; streamed, or read
            from the local ``datasets`` cache when the hub is unreachable) or a
            ``datasets.Dataset`` / iterable of rows already in memory.
        n_rows: rows to return.
        context_size: row length (default: ``model.cfg.n_ctx``).
        column: the text column.
        split: split of a named dataset.

    Raises:
        DatasetUnavailableError: a named dataset with no network and no cached copy (within
            seconds; names the offline token sources, :func:`corpus_tokens` and the IOI
            distributions).
    """
    tok = model.tokenizer
    if tok is None:
        raise ValueError("dataset_tokens needs a model with a tokenizer")
    ctx = context_size or model.cfg.n_ctx
    if isinstance(dataset, str):
        dataset = _open_dataset(dataset, split)
    need = n_rows * (ctx - 1)
    stream: list[int] = []
    with tqdm(total=need, desc="tokenize dataset", leave=False) as bar:
        for row in dataset:
            ids = tok(row[column], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            stream.extend(ids)
            bar.update(len(ids))
            if len(stream) >= need:
                break
    if len(stream) < need:
        raise ValueError(f"the dataset holds {len(stream)} tokens; {need} needed for {n_rows} rows of {ctx}")
    body = torch.tensor(stream[:need], dtype=torch.long).view(n_rows, ctx - 1)
    tokens = torch.cat([torch.full((n_rows, 1), tok.bos_token_id, dtype=torch.long), body], dim=1)
    keep = torch.ones_like(tokens, dtype=torch.bool)
    keep[:, 0] = False
    return TokenRows(tokens, keep)
