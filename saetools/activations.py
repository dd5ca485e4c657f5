"""Activations for SAE training: collected from a model, kept in memory or streamed from
``.npy`` shards on disk.

:func:`collect_activations` reads one hook over token rows, one row per token.

An :class:`ActivationStore` is a list of ``[rows, d_in]`` shards: one tensor in memory, or
memory-mapped ``.npy`` files (``np.load(mmap_mode="r")``) for runs larger than memory, so
only the rows of the current batch are read. Batches come from a seeded index stream that
never touches data, which makes resuming at batch ``k`` free (:meth:`ActivationStore.batches`
with ``start=k``). With one shard the stream is a global shuffle per epoch (identical to
:func:`activation_batches`); with many it shuffles the shard order and the
rows within each shard, like sae-lens's mixing buffer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from saetools.data.files import atomic_dir
from saetools.hooks import check_hook_names

__all__ = ["ActivationStore", "activation_batches", "collect_activations"]


@torch.no_grad()
def collect_activations(
    model,
    tokens: Int[Tensor, "batch pos"],
    hook_name: str,
    *,
    batch_size: int = 64,
    drop_bos: bool = True,
    mask: Tensor | None = None,
) -> Float[Tensor, "n d"]:
    """Activations of ``hook_name`` over ``tokens``, flattened to one row per token.

    Args:
        model: a TransformerLens model.
        tokens: token ids ``[batch, pos]``.
        hook_name: e.g. ``"blocks.2.hook_resid_pre"``; head hooks (``hook_z``) are flattened
            to ``n_heads * d_head`` as sae-lens's ``reshape_activations="hook_z"`` expects.
        batch_size: prompts per forward pass.
        drop_bos: leave out position 0 (BOS activations are outliers).
        mask: optional boolean ``[batch, pos]`` selecting which tokens to keep.
    """
    check_hook_names(model, [hook_name])
    layer = int(hook_name.split(".")[1]) if hook_name.startswith("blocks.") else None
    out = []
    for i in tqdm(range(0, tokens.shape[0], batch_size), desc=f"collect {hook_name}", leave=False):
        chunk = tokens[i : i + batch_size].to(model.cfg.device)
        _, cache = model.run_with_cache(
            chunk, names_filter=hook_name, stop_at_layer=None if layer is None else layer + 1
        )
        act = cache[hook_name]
        if act.ndim == 4:  # [batch, pos, head, d_head]
            act = act.flatten(-2)
        keep = torch.ones(act.shape[:2], dtype=torch.bool, device=act.device)
        if drop_bos:
            keep[:, 0] = False
        if mask is not None:
            keep &= mask[i : i + batch_size].to(act.device)
        out.append(act[keep].float().cpu())
    return torch.cat(out)




def activation_batches(
    acts: Float[Tensor, "n d"], batch_size: int, *, seed: int, device: str | torch.device = "cpu"
) -> Iterator[Tensor]:
    """Endless stream of shuffled batches, reshuffled each epoch from a seeded generator."""
    if acts.shape[0] < batch_size:
        raise ValueError(f"need at least batch_size={batch_size} activations, got {acts.shape[0]}")
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(acts.shape[0], generator=gen)
        for i in range(0, acts.shape[0] - batch_size + 1, batch_size):
            yield acts[perm[i : i + batch_size]].to(device)


def _collect_chunks(model, tokens: Tensor, hook_name: str, *, shard_rows: int, batch_size: int,
                    drop_bos: bool) -> Iterator[Tensor]:
    """Activations of ``hook_name`` over ``tokens`` in chunks of about ``shard_rows`` rows."""
    prompts_per_chunk = max(batch_size, shard_rows // max(1, tokens.shape[1] - int(drop_bos)))
    for i in range(0, tokens.shape[0], prompts_per_chunk):
        yield collect_activations(model, tokens[i : i + prompts_per_chunk], hook_name,
                                  batch_size=batch_size, drop_bos=drop_bos)


def _write_shards(folder: Path, chunks, *, shard_rows: int, hook_name: str | None) -> None:
    """Write ``chunks`` (row blocks) as ``shard_*.npy`` files of ``shard_rows`` rows, then ``store.json``."""
    files: list[str] = []
    buf, n_buf = [], 0

    def flush(rows: Tensor) -> None:
        files.append(f"shard_{len(files):05d}.npy")
        np.save(folder / files[-1], rows.cpu().numpy().astype(np.float32))

    for chunk in chunks:
        buf.append(chunk)
        n_buf += chunk.shape[0]
        while n_buf >= shard_rows:
            rows = torch.cat(buf)
            flush(rows[:shard_rows])
            buf, n_buf = [rows[shard_rows:]], rows.shape[0] - shard_rows
    if n_buf:
        flush(torch.cat(buf))
    if not files:
        raise ValueError("no activations to write: the token rows are empty")
    # the folder itself is swapped in atomically (atomic_dir), so a plain write is enough here
    (folder / "store.json").write_text(json.dumps({"hook_name": hook_name, "shards": files}) + "\n")


class ActivationStore:
    """Rows of activations ``[n, d_in]`` in one or more shards.

    Build one with :meth:`in_memory`, :meth:`from_model` (``path=`` writes shards to disk)
    or :meth:`open` (shards written earlier).
    """

    def __init__(self, shards: list, *, hook_name: str | None = None, path: Path | None = None):
        if not shards:
            raise ValueError("an ActivationStore needs at least one shard")
        widths = {s.shape[1] for s in shards}
        if len(widths) != 1:
            raise ValueError(f"all shards must have the same width, got {sorted(widths)}")
        self.shards, self.hook_name, self.path = shards, hook_name, path
        self.d_in = widths.pop()
        self.sizes = [s.shape[0] for s in shards]

    def __len__(self) -> int:
        return sum(self.sizes)

    def __repr__(self) -> str:
        where = f"on disk at {self.path}" if self.path else "in memory"
        return f"ActivationStore({len(self)} x {self.d_in}, {len(self.shards)} shard(s) {where})"

    @classmethod
    def in_memory(cls, acts: Float[Tensor, "n d"], *, hook_name: str | None = None) -> ActivationStore:
        """A one-shard store around an existing tensor (no copy)."""
        if acts.ndim != 2:
            raise ValueError(f"acts must be [n, d_in], got {tuple(acts.shape)}")
        return cls([acts], hook_name=hook_name)

    @classmethod
    def from_model(
        cls,
        model,
        tokens: Int[Tensor, "batch pos"],
        hook_name: str,
        *,
        path: str | Path | None = None,
        shard_rows: int = 1 << 18,
        batch_size: int = 64,
        drop_bos: bool = True,
    ) -> ActivationStore:
        """Collect ``hook_name`` over ``tokens``; in memory, or as shards under ``path``.

        Args:
            model: a TransformerLens model.
            tokens: prompts ``[batch, pos]`` (e.g. from the bundled corpus or IOI prompts).
            hook_name: where to read.
            path: a directory for ``shard_*.npy`` + ``store.json``; ``None`` keeps it in memory.
            shard_rows: rows per shard on disk (memory needed while collecting).
            batch_size: prompts per forward pass.
            drop_bos: leave out position 0.
        """
        if path is None:
            return cls.in_memory(collect_activations(model, tokens, hook_name, batch_size=batch_size,
                                                     drop_bos=drop_bos), hook_name=hook_name)
        path = Path(path)
        with atomic_dir(path) as tmp:  # checked writable before collecting; all or nothing
            _write_shards(tmp, _collect_chunks(model, tokens, hook_name, shard_rows=shard_rows,
                                               batch_size=batch_size, drop_bos=drop_bos),
                          shard_rows=shard_rows, hook_name=hook_name)
        return cls.open(path)

    def save(self, path: str | Path, *, shard_rows: int = 1 << 18) -> ActivationStore:
        """Write this store as ``.npy`` shards under ``path`` and return the on-disk store.

        Atomic: the shards are written to a temporary folder beside ``path`` and moved into place
        at the end, so an interrupted save leaves a store already at ``path`` intact.
        """
        path = Path(path)
        chunks = (torch.as_tensor(np.asarray(s)) if not isinstance(s, Tensor) else s for s in self.shards)
        with atomic_dir(path) as tmp:
            _write_shards(tmp, chunks, shard_rows=shard_rows, hook_name=self.hook_name)
        return ActivationStore.open(path)

    @classmethod
    def open(cls, path: str | Path) -> ActivationStore:
        """Open shards written by :meth:`from_model` (memory-mapped, nothing read yet)."""
        path = Path(path)
        meta_file = path / "store.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{meta_file} not found; write a store with ActivationStore.from_model(..., path=)")
        meta = json.loads(meta_file.read_text())
        shards = [np.load(path / f, mmap_mode="r") for f in meta["shards"]]
        return cls(shards, hook_name=meta.get("hook_name"), path=path)

    def _index_stream(self, batch_size: int, seed: int) -> Iterator[list[tuple[int, Tensor]]]:
        gen = torch.Generator().manual_seed(seed)
        while True:
            order = [0] if len(self.shards) == 1 else torch.randperm(len(self.shards), generator=gen).tolist()
            pending: list[tuple[int, Tensor]] = []
            n_pending = 0
            for s in order:
                pending.append((s, torch.randperm(self.sizes[s], generator=gen)))
                n_pending += self.sizes[s]
                while n_pending >= batch_size:
                    batch, need = [], batch_size
                    while need:
                        s_, idx = pending[0]
                        take = idx[:need]
                        batch.append((s_, take))
                        need -= take.numel()
                        if take.numel() == idx.numel():
                            pending.pop(0)
                        else:
                            pending[0] = (s_, idx[take.numel():])
                    n_pending -= batch_size
                    yield batch
            # the remainder of an epoch (< batch_size rows) is dropped

    def _rows(self, shard: int, idx: Tensor) -> Tensor:
        data = self.shards[shard]
        if isinstance(data, Tensor):
            return data[idx]
        order = np.argsort(idx.numpy(), kind="stable")  # read in file order, return in stream order
        rows = np.empty((idx.numel(), self.d_in), dtype=np.float32)
        rows[order] = data[idx.numpy()[order]]
        return torch.from_numpy(rows)

    def batches(self, batch_size: int, *, seed: int, start: int = 0,
                device: str | torch.device = "cpu") -> Iterator[Tensor]:
        """Endless stream of shuffled ``[batch_size, d_in]`` batches; ``start`` skips batches unread."""
        if len(self) < batch_size:
            raise ValueError(f"need at least batch_size={batch_size} activations, got {len(self)}")
        for k, parts in enumerate(self._index_stream(batch_size, seed)):
            if k < start:
                continue
            rows = [self._rows(s, idx) for s, idx in parts]
            yield (rows[0] if len(rows) == 1 else torch.cat(rows)).to(device, torch.float32)

    def check_finite(self, max_rows: int = 1 << 20) -> None:
        """Raise ``ValueError`` if the first ``max_rows`` rows contain NaN or inf."""
        seen = 0
        for s, data in enumerate(self.shards):
            rows = torch.from_numpy(np.array(data[: max_rows - seen])) if not isinstance(data, Tensor) else data[: max_rows - seen]
            if not torch.isfinite(rows).all():
                raise ValueError(f"acts contain NaN or inf values (shard {s}); check the model and hook")
            seen += rows.shape[0]
            if seen >= max_rows:
                return
