"""On-disk caches: whole signal frames keyed by a hash of their inputs, and per-text scores keyed by content.

Files are Parquet, written to a temporary name and renamed, so a killed run never leaves half a cache entry.
``CACHE_STATS`` counts hits and misses in this process (the sweep summary reports them).
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

CACHE_STATS: Counter = Counter()
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def project_path(path: str | os.PathLike) -> Path:
    """``path`` with ``~`` expanded, taken as given when absolute, else relative to the project root (where
    conf/config.yaml says relative ``paths.*`` live).

    >>> project_path("data/cache")
    """
    path = Path(path).expanduser()
    return (path if path.is_absolute() else PROJECT_ROOT / path).resolve()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes, read in blocks.

    >>> file_sha256("data/catalog.yaml")[:12]
    """
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def fingerprint(*parts: Any) -> str:
    """A stable SHA-256 hex digest of frames, arrays, dicts, lists and scalars (in order).

    >>> fingerprint(news_frame, {"window": 5})[:12]
    """
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, (pd.DataFrame, pd.Series)):
            frame = part.to_frame() if isinstance(part, pd.Series) else part
            digest.update(json.dumps([str(c) for c in frame.columns]).encode())
            digest.update(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes())
        elif isinstance(part, np.ndarray):
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\x1f")
    return digest.hexdigest()


def text_hash(texts: pd.Series) -> pd.Series:
    """SHA-1 of each text's UTF-8 bytes (hex), the key of the per-text score cache."""
    return texts.map(lambda t: hashlib.sha1(t.encode("utf-8", "surrogatepass")).hexdigest())


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        frame.to_parquet(temporary)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_text_atomic(text: str, path: Path) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same folder and an atomic rename.

    >>> write_text_atomic("<html>...</html>", Path("runs/index.html"))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


class SignalCache:
    """Whole signal frames on disk under ``root``, one Parquet file per (name, key).

    >>> frame = SignalCache(root).get_or_compute("lexicon", {"news": news_fp, **params}, compute)
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, name: str, key: dict[str, Any]) -> Path:
        return self.root / "signals" / f"{name}-{fingerprint(key)[:20]}.parquet"

    def get_or_compute(self, name: str, key: dict[str, Any], compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        """Return the cached frame for (name, key), computing and storing it on a miss."""
        path = self.path(name, key)
        if path.exists():
            CACHE_STATS[f"{name}.hit"] += 1
            return pd.read_parquet(path)
        CACHE_STATS[f"{name}.miss"] += 1
        frame = compute()
        write_parquet_atomic(frame, path)
        return frame


class TextScoreCache:
    """Per-text scores of one model, keyed by ``text_hash``; new scores are appended as new part files.

    >>> cache = TextScoreCache(root, model_fp); known = cache.lookup(hashes); cache.add(new_scores)
    """

    def __init__(self, root: str | os.PathLike, model_fingerprint: str):
        self.folder = Path(root) / "texts" / model_fingerprint[:20]

    def lookup(self, hashes: pd.Series) -> pd.DataFrame:
        """Scores already known for ``hashes``, indexed by hash (rows only for known hashes)."""
        parts = sorted(self.folder.glob("part-*.parquet")) if self.folder.exists() else []
        if not parts:
            return pd.DataFrame(index=pd.Index([], name="text_hash"))
        known = pd.concat([pd.read_parquet(p) for p in parts])
        known = known[~known.index.duplicated(keep="first")]
        return known.loc[known.index.intersection(pd.Index(hashes.unique()))]

    def add(self, scores: pd.DataFrame) -> None:
        """Store ``scores`` (indexed by text hash) as a new part file."""
        if len(scores):
            write_parquet_atomic(scores, self.folder / f"part-{uuid.uuid4().hex}.parquet")
