"""Prepared datasets: shakespeare tokenized each way, read back exactly, learnt from; nanoGPT's
token files as they are; bad inputs refused in one line with nothing left behind; memory
flat while preparing a large input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from models import TrainConfig
from models.data import SPLIT_CHUNK, VALIDATION_EVERY, Batches, data_identity, split_corpus
from models.prepare import TOKENIZER_FILE, decode, prepare
from models.train import train
from sweeper.cli import main
from tests.conftest import SHAKESPEARE, debug_config


def documents() -> list[str]:
    """Shakespeare's paragraphs: the documents of the .jsonl and .parquet inputs."""
    return [p for p in SHAKESPEARE.read_text().split("\n\n") if p.strip()]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Shakespeare prepared with each tokenizer kind and from each input format."""
    root = tmp_path_factory.mktemp("prepared")
    jsonl = root / "shakespeare.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(documents()))
    )
    parquet = root / "shakespeare.parquet"
    pq.write_table(pa.table({"body": documents()}), parquet, row_group_size=100)
    out = {
        "bytes": prepare([SHAKESPEARE], tokenizer="bytes", out=root / "bytes"),
        "bpe": prepare([SHAKESPEARE], tokenizer="bpe", vocab_size=512, out=root / "bpe"),
        "jsonl": prepare([jsonl], tokenizer="bytes", out=root / "jsonl", dtype="uint32"),
    }
    out["parquet"] = prepare(
        [parquet],
        tokenizer=str(root / "bpe" / TOKENIZER_FILE),
        text_field="body",
        out=root / "parquet",
    )
    return {kind: Path(identity.source) for kind, identity in out.items()}


def in_order(directory: Path) -> np.ndarray:
    """The whole token stream again: the split's chunks put back in their places."""
    train_tokens, val_tokens = split_corpus(str(directory))
    train_chunks = [
        train_tokens[i : i + SPLIT_CHUNK] for i in range(0, len(train_tokens), SPLIT_CHUNK)
    ]
    val_chunks = [val_tokens[i : i + SPLIT_CHUNK] for i in range(0, len(val_tokens), SPLIT_CHUNK)]
    stream = []
    for n in range(len(train_chunks) + len(val_chunks)):
        source = val_chunks if n % VALIDATION_EVERY == VALIDATION_EVERY - 1 else train_chunks
        stream.append(source.pop(0))
    return np.concatenate(stream)


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
def test_text_file_decodes_back_to_itself(prepared, kind):
    assert decode(prepared[kind], in_order(prepared[kind])) == SHAKESPEARE.read_text()


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_documents_decode_back_to_themselves(prepared, kind):
    tokens = in_order(prepared[kind])
    meta = json.loads((prepared[kind] / "meta.json").read_text())
    assert np.count_nonzero(tokens == meta["eot_token"]) == len(documents())  # one after each
    assert decode(prepared[kind], tokens) == "".join(documents())


def test_meta_names_the_tokenizer_and_counts(prepared):
    bpe = data_identity(str(prepared["bpe"]))
    assert (bpe.tokenizer, bpe.vocab_size) == ("bpe", 512)
    assert bpe.tokenizer_sha256 is not None and bpe.train_tokens and bpe.val_tokens
    # The parquet input was encoded with the bpe's own tokenizer.json: the same tokenizer.
    parquet = data_identity(str(prepared["parquet"]))
    assert (parquet.tokenizer, parquet.tokenizer_sha256) == ("tokenizer.json", bpe.tokenizer_sha256)
    assert data_identity(str(prepared["bytes"])).vocab_size == 257
    # uint32 when asked for, uint16 (nanoGPT's) otherwise: 4 and 2 bytes a token.
    jsonl = data_identity(str(prepared["jsonl"]))
    assert (prepared["jsonl"] / "train.bin").stat().st_size == 4 * jsonl.train_tokens
    assert (prepared["bytes"] / "train.bin").stat().st_size == 2 * data_identity(
        str(prepared["bytes"])
    ).train_tokens
    assert 0.08 < bpe.val_tokens / (bpe.train_tokens + bpe.val_tokens) < 0.12


def test_vocabulary_comes_from_meta_and_a_mismatch_names_the_field(prepared):
    config = TrainConfig.model_validate({"data": str(prepared["bpe"])})
    assert config.model.vocab_size == 512
    with pytest.raises(ValidationError) as e:
        TrainConfig.model_validate({"data": str(prepared["bpe"]), "model": {"vocab_size": 256}})
    [error] = e.value.errors()
    assert error["loc"] == ("model", "vocab_size") and "512" in error["msg"]


def test_a_model_learns_the_bpe_data(prepared):
    """Eval loss falls well below the unigram entropy: the model uses context."""
    train_tokens, _ = split_corpus(str(prepared["bpe"]))
    counts = np.bincount(train_tokens)
    p = counts[counts > 0] / counts.sum()
    unigram = float(-(p * np.log(p)).sum())
    config = debug_config(
        str(prepared["bpe"]), steps=80, batch_size=16, eval_interval=40, precision="fp32", lr=2**-4
    )
    assert config.model.vocab_size == 512
    result = train(config)
    assert result.status == "completed"
    assert result.final_eval_loss < unigram - 0.75, (result.final_eval_loss, unigram)


def test_nanogpt_token_files_read_as_they_are(tmp_path, prepared):
    # What nanoGPT's data/*/prepare.py does, verbatim but for the names.
    ids = np.random.default_rng(0).integers(0, 50257, size=200_000)
    for split, part in (("train", ids[:180_000]), ("val", ids[180_000:])):
        arr = np.memmap(tmp_path / f"{split}.bin", dtype=np.uint16, mode="w+", shape=(len(part),))
        arr[:] = part
        arr.flush()
    (tmp_path / "meta.json").write_text('{"vocab_size": 50257}')
    config = TrainConfig.model_validate({"data": str(tmp_path)})
    assert config.model.vocab_size == 50257
    train_tokens, val_tokens = split_corpus(str(tmp_path))
    assert np.array_equal(train_tokens, ids[:180_000]) and np.array_equal(val_tokens, ids[180_000:])
    x, y = Batches(train_tokens, batch_size=4, seq_len=16, seed=0).next()
    assert x.max() < 50257 and x[:, 1:].equal(y[:, :-1])
    identity = data_identity(str(tmp_path))
    assert (identity.tokenizer, identity.train_tokens) == ("unknown", 180_000)
    # And the reverse: nanoGPT's train.py reads our files with its own memmap.
    ours = np.memmap(prepared["bpe"] / "train.bin", dtype=np.uint16, mode="r")
    assert np.array_equal(ours, split_corpus(str(prepared["bpe"]))[0])


def sweeper(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """The CLI's entry point in this process (the console script's code path): its exit
    code and stderr."""
    monkeypatch.setattr(sys, "argv", ["sweeper", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    return int(exited.value.code or 0), capsys.readouterr().err


def wide_tokenizer(path: Path) -> Path:
    """A real tokenizer.json with 70000 ids: more than uint16 holds."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0} | {f"w{i}": i + 1 for i in range(69_999)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(path))
    return path


def test_bad_inputs_fail_in_one_line_and_leave_nothing(tmp_path, monkeypatch, capsys):
    (tmp_path / "docs.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n')
    (tmp_path / "empty.txt").write_text("")
    out = tmp_path / "out"
    cases = [
        (["docs.jsonl", "--tokenizer", "bytes"], "docs.jsonl:2: no field 'text'"),
        (["empty.txt", "--tokenizer", "bytes"], "empty.txt: empty file"),
        (
            [
                str(SHAKESPEARE),
                "--tokenizer",
                str(wide_tokenizer(tmp_path / "wide.json")),
                "--dtype",
                "uint16",
            ],
            "the vocabulary has 70000 tokens",
        ),
        (["docs.jsonl", "--tokenizer", "bpe"], "--vocab-size"),
    ]
    before = sorted(os.listdir(tmp_path))
    for args, needle in cases:
        code, err = sweeper(
            monkeypatch,
            capsys,
            "data",
            "prepare",
            *[str(tmp_path / a) if a.endswith((".jsonl", ".txt")) else a for a in args],
            "--out",
            str(out),
        )
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
        assert sorted(os.listdir(tmp_path)) == before  # no `out`, no temporary directory
    (tmp_path / "bins").mkdir()
    code, err = sweeper(
        monkeypatch, capsys, "train", "--data", str(tmp_path / "bins"), "--steps", "1"
    )
    assert code == 2 and "without meta.json" in err and len(err.strip().splitlines()) == 1, err


PEAK_RSS = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    from models.prepare import prepare
    prepare([Path(sys.argv[1])], tokenizer="bytes", out=Path(sys.argv[2]))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # KiB on Linux
    """
)


def peak_rss(text: Path, out: Path) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(text), str(out)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    return int(done.stdout.split()[-1])


def test_memory_stays_flat_while_preparing_a_large_input(tmp_path):
    """256 MB of text prepared in a process whose peak RSS grows by far less than that
    over preparing 330 KB: the input streams through in blocks."""
    big = tmp_path / "big.txt"
    paragraph = SHAKESPEARE.read_bytes()
    with big.open("wb") as f:
        for _ in range(256 * 2**20 // len(paragraph)):
            f.write(paragraph)
    small_peak = peak_rss(SHAKESPEARE, tmp_path / "small")
    big_peak = peak_rss(big, tmp_path / "big")
    assert data_identity(str(tmp_path / "big")).train_tokens > 200 * 2**20
    assert big_peak - small_peak < 64 * 2**20, (small_peak, big_peak)
