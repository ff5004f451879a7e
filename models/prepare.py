"""Preparing a dataset: local text files tokenized once into the token files `models.data`
memory-maps.

    prepare([Path("corpus.jsonl")], tokenizer="bpe", vocab_size=8192, out=Path("data/c"))

Inputs are local files, nothing is downloaded: ``.txt`` (a file is one document),
``.jsonl`` (one document per line, its ``text_field``) and ``.parquet`` (one per row, its
``text_field`` column, read with pyarrow a record batch at a time). Tokenizers:

- ``bytes``: UTF-8 bytes, 256 ids and an end-of-text token (257);
- ``bpe``: a byte-level BPE of ``vocab_size`` ids trained on the inputs by Hugging Face
  ``tokenizers`` (locally; its trainer reads the inputs once more before encoding and keeps
  only word counts);
- a path to an existing ``tokenizer.json``.

Everything streams in blocks of about 1 MiB of text: read, encoded, split and appended to
the token files, so memory stays flat whatever the size of the input. The split is
`models.data`'s rule over the token stream: every tenth chunk of 8192 tokens goes to
validation. The end-of-text token, when the tokenizer has one, follows every document.

All files are written into a temporary directory beside ``out`` and it is renamed to
``out`` at the end, so a failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol, get_args

import numpy as np

from models.data import (
    META_FILE,
    SPLIT_CHUNK,
    TRAIN_FILE,
    UINT16_VOCAB,
    VAL_FILE,
    VALIDATION_EVERY,
    DataError,
    DataIdentity,
    TokenDtype,
    data_identity,
    file_sha256,
    read_meta,
)

TOKENIZER_FILE = "tokenizer.json"
EOT = "<|endoftext|>"
# End-of-text tokens an existing tokenizer may have, in the order they are looked for.
EOT_NAMES = (EOT, "<|end_of_text|>", "</s>", "<eos>")
BLOCK_CHARS = 1 << 20  # text per encoded block: bounds memory, large enough for throughput
SUFFIXES = (".txt", ".jsonl", ".parquet")
MIN_TOKENS = SPLIT_CHUNK * VALIDATION_EVERY  # one validation chunk
DtypeChoice = Literal["auto", "uint16", "uint32"]
DTYPE_CHOICES: tuple[DtypeChoice, ...] = get_args(DtypeChoice)


class PrepareError(DataError):
    """Input `prepare` refuses; ``field`` is the argument at fault (a CLI option)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# --- reading --------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """Text to encode; ``ends_document``: the end-of-text token follows it."""

    text: str
    ends_document: bool


def _check_inputs(inputs: Sequence[Path], text_field: str) -> None:
    """Refuse what can be refused before any work: missing files, unknown formats, a
    parquet file without the column."""
    if not inputs:
        raise PrepareError("inputs", "give at least one input file")
    for path in inputs:
        if not path.is_file():
            raise PrepareError("inputs", f"no such file {str(path)!r}")
        if path.suffix not in SUFFIXES:
            raise PrepareError(
                "inputs", f"{path}: unknown format {path.suffix!r} (use {', '.join(SUFFIXES)})"
            )
        if path.suffix == ".parquet":
            columns = _parquet(path).schema_arrow.names
            if text_field not in columns:
                raise PrepareError(
                    "text_field",
                    f"{path}: no column {text_field!r} (columns: {', '.join(columns)})",
                )


def _parquet(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PrepareError(
            "inputs", f"{path}: reading parquet needs the pyarrow package (pip install pyarrow)"
        ) from None
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow's errors have no common base short of Exception
        raise PrepareError("inputs", f"{path}: not a parquet file: {e}") from None


def _txt_pieces(path: Path) -> Iterator[Piece]:
    """A text file in blocks cut after a newline (so that no word is split), the file's
    end ending its one document."""
    carry = ""
    seen = False
    with path.open(encoding="utf-8") as f:
        while block := f.read(BLOCK_CHARS):
            text = carry + block
            cut = text.rfind("\n") + 1
            if cut == 0 and len(text) < 4 * BLOCK_CHARS:  # a very long line: wait for its end
                carry = text
                continue
            cut = cut or len(text)
            carry = text[cut:]
            if text[:cut]:
                seen = True
                yield Piece(text[:cut], ends_document=False)
    if not (seen or carry):
        raise PrepareError("inputs", f"{path}: empty file")
    yield Piece(carry, ends_document=True)


def _jsonl_pieces(path: Path, text_field: str) -> Iterator[Piece]:
    seen = False
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise PrepareError("inputs", f"{path}:{number}: not JSON: {e}") from None
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                what = "no field" if text is None else "a non-text field"
                raise PrepareError("text_field", f"{path}:{number}: {what} {text_field!r}")
            seen = True
            yield Piece(text, ends_document=True)
    if not seen:
        raise PrepareError("inputs", f"{path}: empty file")


def _parquet_pieces(path: Path, text_field: str) -> Iterator[Piece]:
    seen = False
    for batch in _parquet(path).iter_batches(batch_size=1024, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            if text is None:
                continue
            if not isinstance(text, str):
                raise PrepareError("text_field", f"{path}: column {text_field!r} is not text")
            seen = True
            yield Piece(text, ends_document=True)
    if not seen:
        raise PrepareError("inputs", f"{path}: no rows with text")


def read_pieces(inputs: Sequence[Path], text_field: str) -> Iterator[Piece]:
    """Every input's text, in order, as pieces of at most about a block."""
    for path in inputs:
        try:
            if path.suffix == ".txt":
                yield from _txt_pieces(path)
            elif path.suffix == ".jsonl":
                yield from _jsonl_pieces(path, text_field)
            else:
                yield from _parquet_pieces(path, text_field)
        except UnicodeDecodeError as e:
            raise PrepareError("inputs", f"{path}: not UTF-8 text ({e.reason})") from None


def blocks(pieces: Iterable[Piece]) -> Iterator[list[Piece]]:
    """Pieces grouped into lists of about BLOCK_CHARS characters: one encode call each."""
    group: list[Piece] = []
    size = 0
    for piece in pieces:
        group.append(piece)
        size += len(piece.text)
        if size >= BLOCK_CHARS:
            yield group
            group, size = [], 0
    if group:
        yield group


# --- tokenizers -----------------------------------------------------------------------


class Encoder(Protocol):
    kind: str
    vocab_size: int
    eot_token: int | None

    def encode(self, texts: list[str]) -> list[np.ndarray]: ...


class ByteEncoder:
    kind = "bytes"
    vocab_size = 257
    eot_token: int | None = 256

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]


class HFEncoder:
    """A Hugging Face tokenizer: ``bpe`` (trained here) or ``tokenizer.json`` (given)."""

    def __init__(self, tokenizer: Any, kind: str):
        self.tokenizer, self.kind = tokenizer, kind
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        ids = (tokenizer.token_to_id(name) for name in EOT_NAMES)
        self.eot_token = next((i for i in ids if i is not None), None)

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        encodings = self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        return [np.array(e.ids, dtype=np.uint32) for e in encodings]


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise PrepareError(
            "tokenizer",
            "bpe and tokenizer.json need the tokenizers package (pip install tokenizers)",
        ) from None
    return tokenizers


def train_bpe(texts: Iterable[str], vocab_size: int) -> HFEncoder:
    """A byte-level BPE (GPT-2's pre-tokenizer and decoder) with ``vocab_size`` ids, the
    end-of-text token first; a small corpus may run out of merges below that size."""
    tk = _tokenizers()
    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return HFEncoder(tokenizer, "bpe")


def load_tokenizer_file(path: Path) -> HFEncoder:
    tk = _tokenizers()
    if not path.is_file():
        raise PrepareError("tokenizer", f"no such file {str(path)!r} (or use bytes or bpe)")
    try:
        return HFEncoder(tk.Tokenizer.from_file(str(path)), TOKENIZER_FILE)
    except Exception as e:  # tokenizers raises a bare Exception on a bad file
        raise PrepareError("tokenizer", f"{path}: not a tokenizer.json: {e}") from None


def decode(directory: str | Path, ids: Sequence[int] | np.ndarray) -> str:
    """The text of token ids of a prepared directory, end-of-text tokens left out."""
    directory = Path(directory)
    meta = read_meta(directory)
    ids = [int(i) for i in ids if int(i) != meta.eot_token]
    if meta.tokenizer == "bytes":
        return bytes(ids).decode("utf-8", errors="replace")
    tokenizer = _tokenizers().Tokenizer.from_file(str(directory / TOKENIZER_FILE))
    return str(tokenizer.decode(ids, skip_special_tokens=False))


# --- writing --------------------------------------------------------------------------


def token_dtype(choice: DtypeChoice, vocab_size: int) -> TokenDtype:
    """uint16 when every id fits (nanoGPT's choice), else uint32; a forced uint16 that
    cannot hold the vocabulary is refused."""
    fits = vocab_size <= UINT16_VOCAB
    if choice == "uint16" and not fits:
        raise PrepareError(
            "dtype",
            f"uint16 holds ids up to {UINT16_VOCAB - 1}: the vocabulary has {vocab_size}"
            " tokens (use uint32 or auto)",
        )
    if choice == "auto":
        return "uint16" if fits else "uint32"
    return choice


class SplitWriter:
    """Appends a token stream to train.bin and val.bin, every tenth chunk of SPLIT_CHUNK
    tokens to validation, hashing and counting as it writes."""

    def __init__(self, directory: Path, dtype: TokenDtype):
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.files: list[BinaryIO] = [
            (directory / TRAIN_FILE).open("wb"),
            (directory / VAL_FILE).open("wb"),
        ]
        self.hashes = [hashlib.sha256(), hashlib.sha256()]
        self.counts = [0, 0]
        self.position = 0

    def write(self, tokens: np.ndarray) -> None:
        tokens = tokens.astype(self.dtype, copy=False)
        while len(tokens):
            chunk, offset = divmod(self.position, SPLIT_CHUNK)
            take = tokens[: SPLIT_CHUNK - offset]
            half = int(chunk % VALIDATION_EVERY == VALIDATION_EVERY - 1)
            data = take.tobytes()
            self.files[half].write(data)
            self.hashes[half].update(data)
            self.counts[half] += len(take)
            self.position += len(take)
            tokens = tokens[len(take) :]

    def close(self) -> None:
        for f in self.files:
            f.close()


def _encoder(
    tokenizer: str, vocab_size: int | None, inputs: Sequence[Path], text_field: str
) -> Encoder:
    if tokenizer == "bytes":
        return ByteEncoder()
    if tokenizer == "bpe":
        assert vocab_size is not None  # checked by `prepare`
        texts = (piece.text for piece in read_pieces(inputs, text_field))
        return train_bpe(texts, vocab_size)
    return load_tokenizer_file(Path(tokenizer))


def prepare(
    inputs: Sequence[Path],
    *,
    tokenizer: str,
    out: Path,
    vocab_size: int | None = None,
    text_field: str = "text",
    dtype: DtypeChoice = "auto",
) -> DataIdentity:
    """Tokenize ``inputs`` into the prepared directory ``out`` (which must not exist yet)
    and return its identity. ``tokenizer``: bytes, bpe (needs ``vocab_size``) or the path
    of a tokenizer.json. Raises PrepareError (or DataError) with a one-line message."""
    out = out.expanduser().absolute()
    if out.exists():
        raise PrepareError("out", f"{out} already exists: choose another directory")
    inputs = [p.expanduser().absolute() for p in inputs]
    _check_inputs(inputs, text_field)
    if tokenizer == "bpe" and (vocab_size is None or vocab_size <= ByteEncoder.vocab_size):
        raise PrepareError(
            "vocab_size", "bpe needs --vocab-size above 257 (256 bytes and end-of-text)"
        )
    if tokenizer != "bpe" and vocab_size is not None:
        raise PrepareError("vocab_size", "only a bpe trained here takes --vocab-size")
    if tokenizer not in ("bytes", "bpe"):
        tokenizer = str(Path(tokenizer).expanduser().absolute())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide the dataset from other users
        encoder = _encoder(tokenizer, vocab_size, inputs, text_field)
        chosen = token_dtype(dtype, encoder.vocab_size)
        writer = SplitWriter(tmp, chosen)
        try:
            for group in blocks(read_pieces(inputs, text_field)):
                for piece, ids in zip(group, encoder.encode([p.text for p in group]), strict=True):
                    writer.write(ids)
                    if piece.ends_document and encoder.eot_token is not None:
                        writer.write(np.array([encoder.eot_token], dtype=np.uint32))
        finally:
            writer.close()
        if writer.position < MIN_TOKENS:
            raise PrepareError(
                "inputs",
                f"only {writer.position} tokens: a split needs at least {MIN_TOKENS} (every"
                f" tenth chunk of {SPLIT_CHUNK} goes to validation)",
            )
        tokenizer_sha256 = None
        if isinstance(encoder, HFEncoder):
            encoder.tokenizer.save(str(tmp / TOKENIZER_FILE))
            tokenizer_sha256 = file_sha256(tmp / TOKENIZER_FILE)
        meta = {
            "vocab_size": encoder.vocab_size,
            "dtype": chosen,
            "tokenizer": encoder.kind,
            "tokenizer_sha256": tokenizer_sha256,
            "eot_token": encoder.eot_token,
            "train_tokens": writer.counts[0],
            "val_tokens": writer.counts[1],
            "train_sha256": writer.hashes[0].hexdigest(),
            "val_sha256": writer.hashes[1].hexdigest(),
            "split": {"chunk": SPLIT_CHUNK, "validation_every": VALIDATION_EVERY},
            "inputs": [str(p) for p in inputs],
            "text_field": text_field,
            "tokenizer_source": None if tokenizer in ("bytes", "bpe") else str(tokenizer),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        os.rename(tmp, out)  # atomic: `out` appears complete or not at all
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    return data_identity(str(out))
