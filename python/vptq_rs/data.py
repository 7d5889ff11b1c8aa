"""Evaluation and calibration text: the corpora of ``../shared/data`` by the GPTQ/VPTQ rules.

Corpora are read from a directory (``--data-dir``, else ``$VPTQ_RS_DATA_DIR``); nothing here
downloads. Calibration never sees test text: WikiText-2 calibration uses the validation
split, C4 calibration documents 0-999 and C4 evaluation documents 1000-1999.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vptq_rs.errors import InvalidValueError

DATA_ENV = "VPTQ_RS_DATA_DIR"
EVAL_DATASETS = ("wikitext2", "c4", "ptb")
C4_FILE = "c4/c4_validation_2k.parquet"
C4_CALIB_DOCS = range(0, 1000)
C4_EVAL_DOCS = range(1000, 2000)


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The corpus directory: ``explicit``, else ``$VPTQ_RS_DATA_DIR``; must exist."""
    raw = explicit if explicit is not None else os.environ.get(DATA_ENV)
    if not raw:
        raise InvalidValueError(
            f"no data directory: pass --data-dir or set {DATA_ENV} (e.g. ../shared/data)"
        )
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise InvalidValueError(f"data directory {path} does not exist")
    return path


def _read(path: Path) -> str:
    if not path.is_file():
        raise InvalidValueError(f"corpus file {path} not found")
    return path.read_text(encoding="utf-8")


def c4_documents(root: Path, docs: Sequence[int] | range) -> list[str]:
    """Texts of the given document numbers of the shared C4 validation sample."""
    import pyarrow.parquet as pq

    path = root / C4_FILE
    if not path.is_file():
        raise InvalidValueError(f"corpus file {path} not found")
    texts = pq.read_table(path, columns=["text"]).column("text").to_pylist()
    return [texts[i] for i in docs]


def eval_text(dataset: str, data_dir_: str | os.PathLike[str] | None = None) -> str:
    """The evaluation string of a corpus (SOURCES.md protocol), or a text file's contents.

    wikitext2: test rows (``'' if blank else line + '\\n'``) joined by ``"\\n\\n"``;
    ptb: test sentences joined by a space; c4: documents 1000-1999 joined by ``"\\n\\n"``.
    """
    if dataset not in EVAL_DATASETS:
        return _read(Path(dataset))
    root = data_dir(data_dir_)
    if dataset == "wikitext2":
        lines = _read(root / "wikitext-2-raw" / "wiki.test.raw").split("\n")
        rows = ["" if line.strip() == "" else line + "\n" for line in lines]
        return "\n\n".join(rows)
    if dataset == "ptb":
        return " ".join(_read(root / "ptb" / "ptb.test.txt").split("\n"))
    return "\n\n".join(c4_documents(root, C4_EVAL_DOCS))


def calibration_texts(dataset: str, data_dir_: str | os.PathLike[str] | None = None) -> list[str]:
    """Documents that calibration may draw from; never test text.

    c4: documents 0-999; wikitext2: the validation split (one string); FILE: that file.
    """
    if dataset == "c4":
        return c4_documents(data_dir(data_dir_), C4_CALIB_DOCS)
    if dataset == "wikitext2":
        return [_read(data_dir(data_dir_) / "wikitext-2" / "wiki.valid.tokens")]
    if dataset == "ptb":
        return [_read(data_dir(data_dir_) / "ptb" / "ptb.valid.txt")]
    return [_read(Path(dataset))]


def calibration_windows(
    tokenizer: Any,
    dataset: str,
    nsamples: int,
    seqlen: int,
    seed: int = 0,
    data_dir_: str | os.PathLike[str] | None = None,
) -> list[list[int]]:
    """``nsamples`` token windows of length ``seqlen`` drawn reproducibly (GPTQ style).

    Each sample picks a random document long enough for a window (short documents are
    concatenated first so a small corpus still works) and a random offset in it.
    """
    if nsamples < 1 or seqlen < 2:
        raise InvalidValueError(f"need nsamples >= 1 and seq_len >= 2, got {nsamples}, {seqlen}")
    rng = random.Random(seed)
    docs = [
        tokenizer(t, add_special_tokens=False)["input_ids"]
        for t in calibration_texts(dataset, data_dir_)
    ]
    long_docs = [d for d in docs if len(d) > seqlen]
    if not long_docs:
        joined = [tok for d in docs for tok in d]
        if len(joined) <= seqlen:
            raise InvalidValueError(
                f"calibration text has {len(joined)} tokens, fewer than seq_len {seqlen}"
            )
        long_docs = [joined]
    out = []
    for _ in range(nsamples):
        doc = long_docs[rng.randrange(len(long_docs))]
        start = rng.randrange(len(doc) - seqlen)
        out.append(doc[start : start + seqlen])
    return out
