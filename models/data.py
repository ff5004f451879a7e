"""Byte-level data: a corpus as uint8 tokens, a deterministic split, seeded batches.

The default corpus ``stdlib`` is the ``.py`` source of the running Python's standard library,
read in sorted path order: real text on every machine, no download.
"""

from __future__ import annotations

import sysconfig
from functools import lru_cache
from pathlib import Path

import torch

STDLIB = "stdlib"
# The split interleaves fixed-size chunks (every tenth to validation) so that both halves
# sample the whole corpus, not its first and last files.
SPLIT_CHUNK = 8192
VALIDATION_EVERY = 10
# Evaluation batches are drawn with this seed whatever the training seed, so that all
# trials of a sweep are scored on the same tokens.
EVAL_SEED = 1234


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        p
        for p in root.rglob("*.py")
        if not {"site-packages", "dist-packages"} & set(p.relative_to(root).parts)
    )


@lru_cache(maxsize=4)
def load_corpus(source: str) -> torch.Tensor:
    """All tokens of ``source`` (a text file path or ``stdlib``) as a uint8 tensor."""
    if source == STDLIB:
        raw = b"\n".join(p.read_bytes() for p in _stdlib_files())
    else:
        raw = Path(source).read_bytes()
    if len(raw) < 2 * SPLIT_CHUNK * VALIDATION_EVERY:
        raise ValueError(f"corpus {source!r} has {len(raw)} bytes: too small to split")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


@lru_cache(maxsize=4)
def split_corpus(source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) tokens: every tenth chunk of 8 KiB goes to validation."""
    tokens = load_corpus(source)
    n_chunks = len(tokens) // SPLIT_CHUNK
    chunks = tokens[: n_chunks * SPLIT_CHUNK].view(n_chunks, SPLIT_CHUNK)
    is_val = torch.arange(n_chunks) % VALIDATION_EVERY == VALIDATION_EVERY - 1
    return chunks[~is_val].flatten(), chunks[is_val].flatten()


class Batches:
    """Seeded random windows of ``seq_len + 1`` tokens: inputs and next-token targets.

    Batch ``i`` of stream ``stream`` depends only on (seed, stream, i): a run resumed at
    step i continues with exactly the batches it would have seen, and data-parallel ranks
    (one stream each) never share a batch.
    """

    def __init__(
        self,
        tokens: torch.Tensor,
        *,
        batch_size: int,
        seq_len: int,
        seed: int,
        stream: int = 0,
        index: int = 0,
    ):
        if len(tokens) <= seq_len + 1:
            raise ValueError(f"{len(tokens)} tokens cannot fill a window of {seq_len + 1}")
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.seed, self.stream, self.index = seed, stream, index

    def next(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        mixed = (self.seed * 1_000_003 + self.stream) * 1_000_000_007 + self.index
        generator = torch.Generator().manual_seed(mixed % 2**63)
        self.index += 1
        starts = torch.randint(
            len(self.tokens) - self.seq_len - 1, (self.batch_size,), generator=generator
        )
        offsets = torch.arange(self.seq_len + 1)
        window = self.tokens[starts[:, None] + offsets].long()  # (B, T + 1)
        x, y = window[:, :-1], window[:, 1:]
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)
