"""Data: a corpus of tokens, a deterministic split, seeded batches, and the data's identity.

A run's ``data`` is one of three sources:

- ``stdlib``: the ``.py`` source of the running Python's standard library, read in sorted
  path order as bytes (vocabulary 256): real text on every machine, no download;
- a text file, read as bytes the same way;
- a prepared directory (`models.prepare`, ``sweeper data prepare``): ``train.bin`` and
  ``val.bin``, flat little-endian token ids (uint16 or uint32, the layout nanoGPT's
  ``prepare.py`` writes), memory-mapped, and a ``meta.json`` that names the tokenizer and
  the vocabulary size.

Byte corpora are split here (every tenth chunk to validation); a prepared directory was
split when it was prepared, by the same rule over tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    import torch

STDLIB = "stdlib"
# The split interleaves fixed-size chunks (every tenth to validation) so that both halves
# sample the whole corpus, not its first and last files.
SPLIT_CHUNK = 8192
VALIDATION_EVERY = 10
# Evaluation batches are drawn with this seed whatever the training seed, so that all
# trials of a sweep are scored on the same tokens.
EVAL_SEED = 1234

META_FILE = "meta.json"
TRAIN_FILE = "train.bin"
VAL_FILE = "val.bin"
TokenDtype = Literal["uint16", "uint32"]
UINT16_VOCAB = 2**16  # ids 0..65535


class DataError(ValueError):
    """Data that cannot be read as a corpus; the message is one line naming the file."""


class TokenMeta(BaseModel):
    """``meta.json`` of a prepared directory. Only ``vocab_size`` is required, so that
    nanoGPT's ``train.bin``/``val.bin`` work with a hand-written ``{"vocab_size": 50257}``;
    what is left out is unknown (``tokenizer``) or computed when read (hashes, counts)."""

    model_config = ConfigDict(frozen=True, extra="allow")  # nanoGPT-style extras are kept

    vocab_size: int = Field(ge=2)
    dtype: TokenDtype | None = Field(None, description="default: uint16 when the ids fit")
    tokenizer: str = Field("unknown", description="bytes, bpe, tokenizer.json or unknown")
    tokenizer_sha256: str | None = None
    eot_token: int | None = Field(None, description="the id appended after each document")
    train_tokens: int | None = Field(None, ge=0)
    val_tokens: int | None = Field(None, ge=0)
    train_sha256: str | None = None
    val_sha256: str | None = None

    @property
    def token_dtype(self) -> TokenDtype:
        if self.dtype is not None:
            return self.dtype
        return "uint16" if self.vocab_size <= UINT16_VOCAB else "uint32"


class DataIdentity(BaseModel):
    """What a run trained on, stored with each sweep and run: the transfer compares the
    proxies' with the target's, and the dashboard and ``sweep status`` show it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(description="'stdlib', a text file or a prepared directory")
    sha256: str = Field(
        description="content: the text file's bytes, the token files', or for stdlib the"
        " Python build whose library it is"
    )
    tokenizer: str = Field(description="bytes, bpe, tokenizer.json or unknown")
    tokenizer_sha256: str | None = Field(None, description="of tokenizer.json; None for bytes")
    vocab_size: int
    train_tokens: int | None = Field(None, description="None for stdlib (not counted)")
    val_tokens: int | None = None


def is_prepared(source: str) -> bool:
    # os.path, not pathlib: a name too long for the OS is then "not a directory", no error.
    return source != STDLIB and os.path.isdir(source)


def read_meta(directory: str | Path) -> TokenMeta:
    """The ``meta.json`` of a prepared directory, checked against its token files."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise DataError(
            f"{directory} is a directory without {META_FILE}: prepare one with"
            " `sweeper data prepare`, or write"
            ' {"vocab_size": N} beside its train.bin and val.bin'
        )
    try:
        meta = TokenMeta.model_validate(json.loads(meta_path.read_text()))
    except (ValueError, ValidationError) as e:  # JSON syntax, or a bad field
        first = str(e).splitlines()
        raise DataError(f"{meta_path}: not a valid {META_FILE}: {' '.join(first[:3])}") from None
    itemsize = np.dtype(meta.token_dtype).itemsize
    for name, count in ((TRAIN_FILE, meta.train_tokens), (VAL_FILE, meta.val_tokens)):
        path = directory / name
        if not path.is_file():
            raise DataError(f"{directory}: no {name} beside {META_FILE}")
        size = path.stat().st_size
        if size % itemsize or (count is not None and size != count * itemsize):
            expected = "" if count is None else f" ({count} tokens in {META_FILE})"
            raise DataError(
                f"{path}: {size} bytes is not a whole number of {meta.token_dtype} tokens"
                + expected
            )
    return meta


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        p
        for p in root.rglob("*.py")
        if not {"site-packages", "dist-packages"} & set(p.relative_to(root).parts)
    )


@lru_cache(maxsize=4)
def load_corpus(source: str) -> np.ndarray:
    """All bytes of a byte corpus (a text file path or ``stdlib``) as uint8 tokens."""
    if source == STDLIB:
        raw = b"\n".join(p.read_bytes() for p in _stdlib_files())
    else:
        raw = Path(source).read_bytes()
    if len(raw) < 2 * SPLIT_CHUNK * VALIDATION_EVERY:
        raise ValueError(f"corpus {source!r} has {len(raw)} bytes: too small to split")
    return np.frombuffer(raw, dtype=np.uint8)


def _split_counts(total: int) -> tuple[int, int]:
    """(train, validation) tokens of a byte corpus of ``total`` tokens (see split_corpus)."""
    n_chunks = total // SPLIT_CHUNK
    n_val = n_chunks // VALIDATION_EVERY
    return (n_chunks - n_val) * SPLIT_CHUNK, n_val * SPLIT_CHUNK


@lru_cache(maxsize=4)
def split_corpus(source: str) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) tokens. A byte corpus: every tenth chunk of 8 KiB goes to
    validation. A prepared directory: its two token files, memory-mapped (read only)."""
    if is_prepared(source):
        meta = read_meta(source)
        return tuple(  # type: ignore[return-value]
            np.memmap(Path(source) / name, dtype=meta.token_dtype, mode="r")
            for name in (TRAIN_FILE, VAL_FILE)
        )
    tokens = load_corpus(source)
    n_chunks = len(tokens) // SPLIT_CHUNK
    chunks = tokens[: n_chunks * SPLIT_CHUNK].reshape(n_chunks, SPLIT_CHUNK)
    is_val = np.arange(n_chunks) % VALIDATION_EVERY == VALIDATION_EVERY - 1
    return chunks[~is_val].reshape(-1), chunks[is_val].reshape(-1)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """The SHA-256 of a file, read in chunks of 4 MiB (memory stays flat)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def combined_sha256(*digests: str) -> str:
    """One hash for a prepared directory: of its token files' hashes, in order."""
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def data_identity(source: str) -> DataIdentity:
    """The identity of ``source``. A prepared directory's hashes come from its meta.json
    (written when it was prepared) or, when that has none, from reading its token files;
    stdlib is named by the Python build, since reading it takes seconds."""
    if source == STDLIB:
        build = f"stdlib {platform.python_implementation()} {platform.python_version()}"
        return DataIdentity(
            source=STDLIB,
            sha256=hashlib.sha256(build.encode()).hexdigest(),
            tokenizer="bytes",
            vocab_size=256,
        )
    path = Path(source)
    if not path.is_dir():
        train, val = _split_counts(path.stat().st_size)
        return DataIdentity(
            source=source,
            sha256=file_sha256(path),
            tokenizer="bytes",
            vocab_size=256,
            train_tokens=train,
            val_tokens=val,
        )
    meta = read_meta(path)
    itemsize = np.dtype(meta.token_dtype).itemsize
    train_hash = meta.train_sha256 or file_sha256(path / TRAIN_FILE)
    val_hash = meta.val_sha256 or file_sha256(path / VAL_FILE)
    return DataIdentity(
        source=source,
        sha256=combined_sha256(train_hash, val_hash),
        tokenizer=meta.tokenizer,
        tokenizer_sha256=meta.tokenizer_sha256,
        vocab_size=meta.vocab_size,
        train_tokens=(path / TRAIN_FILE).stat().st_size // itemsize,
        val_tokens=(path / VAL_FILE).stat().st_size // itemsize,
    )


class Batches:
    """Seeded random windows of ``seq_len + 1`` tokens: inputs and next-token targets.

    Batch ``i`` of stream ``stream`` depends only on (seed, stream, i): a run resumed at
    step i continues with exactly the batches it would have seen, and data-parallel ranks
    (one stream each) never share a batch. ``tokens`` may be a memory map: a batch reads
    only its own windows.
    """

    def __init__(
        self,
        tokens: np.ndarray,
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
        # torch here, not with the module: the configs check their data with this module in
        # commands that never make a batch (`sweeper --help`, the API).
        import torch

        mixed = (self.seed * 1_000_003 + self.stream) * 1_000_000_007 + self.index
        generator = torch.Generator().manual_seed(mixed % 2**63)
        self.index += 1
        starts = torch.randint(
            len(self.tokens) - self.seq_len - 1, (self.batch_size,), generator=generator
        ).numpy()
        offsets = np.arange(self.seq_len + 1)
        window = torch.from_numpy(
            self.tokens[starts[:, None] + offsets].astype(np.int64)
        )  # (B, T + 1)
        x, y = window[:, :-1], window[:, 1:]
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)
