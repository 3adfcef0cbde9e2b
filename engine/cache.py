"""On-disk caches: whole signal frames keyed by a hash of their inputs, and per-text scores keyed by content.

Files are Parquet, written to a temporary name and renamed, so a killed run never leaves half a cache entry.
``CACHE_STATS`` counts hits and misses in this process (the sweep summary reports them).
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from collections import Counter, OrderedDict
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
            digest.update(_row_hashes(frame))
        elif isinstance(part, np.ndarray):
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\x1f")
    return digest.hexdigest()


# pandas' row hashes (``hash_pandas_object``: half of a screening run when every run re-hashed the same news)
# memoised in this process, keyed by a SHA-256 of the exact bytes the frame's values and index are stored in
# (``_memory_digest``), never by object identity: a frame edited in place, even one value, is another key, so a
# memoised hash cannot go stale. Least recently used entries go first beyond ``_ROW_HASHES_MAX_BYTES``. The digest
# costs a tenth of pandas' hashing for text but about 0.6 of it for numbers: frames of numbers only are memoised
# where they are hashed again (``keep_in_memory``: a sweep's workers), frames with text everywhere.
_ROW_HASHES: OrderedDict[bytes, bytes] = OrderedDict()
_ROW_HASHES_MAX_BYTES = 64 << 20
_ROW_HASHES_LOCK = threading.Lock()
_MEMOISE_NUMBERS = [False]


def _row_hashes(frame: pd.DataFrame) -> bytes:
    """``pd.util.hash_pandas_object(frame, index=True)`` as bytes (what ``fingerprint`` digests of a frame),
    memoised by the frame's memory (see ``_ROW_HASHES``)."""
    numbers_only = all(isinstance(kind, pd.DatetimeTZDtype) or (isinstance(kind, np.dtype) and kind.kind in "biufcmM")
                       for kind in frame.dtypes)
    memory = _memory_digest(frame) if _MEMOISE_NUMBERS[0] or not numbers_only else None
    if memory is not None:
        with _ROW_HASHES_LOCK:
            known = _ROW_HASHES.get(memory)
            if known is not None:
                _ROW_HASHES.move_to_end(memory)
                return known
    hashes = pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes()
    if memory is not None and len(hashes) <= _ROW_HASHES_MAX_BYTES:
        with _ROW_HASHES_LOCK:
            _ROW_HASHES[memory] = hashes
            total = sum(map(len, _ROW_HASHES.values()))
            while total > _ROW_HASHES_MAX_BYTES:
                total -= len(_ROW_HASHES.popitem(last=False)[1])
    return hashes


def memory_key(*parts: Any) -> bytes:
    """An in-process key of ``parts`` (frames and JSON-able values): each frame by ``_memory_digest``, its exact
    memory (a tenth or less of ``fingerprint``'s hashing), or by ``fingerprint`` when it keeps Python objects.
    Equal keys mean equal contents; equal contents laid out in memory otherwise only give another key. For memos
    within one process, never for cache files (``fingerprint`` is the stable key across versions and layouts).

    >>> memory_key("engine.vectorized.run_vectorized", {"cash": 1e5}, bars)
    """
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, pd.DataFrame):
            memory = _memory_digest(part)
            digest.update(b"memory " + memory if memory is not None else b"fingerprint " + fingerprint(part).encode())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\x1f")
    return digest.digest()


def _memory_digest(frame: pd.DataFrame) -> bytes | None:
    """SHA-256 of everything a frame's content is read from: its shape, column names, dtypes, every byte of
    its value buffers and of its index. Equal digests mean equal frames (the converse need not hold: the same
    values laid out differently only miss the memo). None when a column or index level keeps its values as
    Python objects (no buffer to read): such frames are hashed by pandas every time."""
    digest = hashlib.sha256()
    digest.update(f"{frame.shape}\0{[(repr(c), str(t)) for c, t in frame.dtypes.items()]}\0".encode())
    if not _digest_index(digest, frame.index):
        return None
    for number in range(frame.shape[1]):
        if not _digest_array(digest, frame.iloc[:, number].array):
            return None
    return digest.digest()


def _digest_index(digest, index: pd.Index) -> bool:
    if isinstance(index, pd.RangeIndex):
        digest.update(f"range {index.start} {index.stop} {index.step} {index.name!r}\0".encode())
        return True
    if isinstance(index, pd.MultiIndex):
        digest.update(f"multi {list(index.names)!r} {index.nlevels}\0".encode())
        return all(_digest_index(digest, level) and _digest_array(digest, codes)
                   for level, codes in zip(index.levels, index.codes))
    digest.update(f"index {index.name!r}\0".encode())
    return _digest_array(digest, index.array)


def _digest_array(digest, values) -> bool:
    """Feed one array's type, dtype, length and value bytes to ``digest``; False for Python-object values."""
    from pandas.core.arrays import ArrowExtensionArray, BaseMaskedArray

    digest.update(f"{type(values).__name__} {values.dtype} {len(values)}\0".encode())
    if isinstance(values, pd.Categorical):
        return _digest_array(digest, values.codes) and _digest_index(digest, values.categories)
    if isinstance(values, ArrowExtensionArray):
        for chunk in values.__arrow_array__().chunks:
            digest.update(f"chunk {chunk.offset} {len(chunk)} {chunk.null_count}\0".encode())
            for buffer in chunk.buffers():  # the children's buffers too, for nested types
                digest.update(b"none\0" if buffer is None else f"{buffer.size}\0".encode())
                if buffer is not None:
                    digest.update(memoryview(buffer))
        return True
    if isinstance(values, BaseMaskedArray):
        return _digest_array(digest, values._data) and _digest_array(digest, values._mask)
    if isinstance(values, (pd.arrays.DatetimeArray, pd.arrays.TimedeltaArray, pd.arrays.PeriodArray)):
        values = values.asi8
    elif isinstance(values, pd.arrays.NumpyExtensionArray):
        values = values.to_numpy()
    if not isinstance(values, np.ndarray) or values.dtype.kind not in "biufcmM":
        return False
    digest.update(np.ascontiguousarray(values).view(np.uint8))  # as bytes: datetimes have no buffer format
    return True


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


def write_folder_atomic(fill: Callable[[Path], None], folder: Path, replaces: Callable[[Path], bool]) -> None:
    """Build a folder with ``fill(staging)`` in a hidden staging folder beside ``folder``, then put it in place
    with a rename: readers see the old folder or the whole new one, never half of it. An existing ``folder`` is
    replaced only when ``replaces(folder)`` says it is one this kind of writer made (else a ConfigError: nothing
    a run did not create is deleted); a failed ``fill`` leaves no staging folder behind.

    >>> write_folder_atomic(lambda staging: model.save_pretrained(staging), Path("data/models/m"), has_model_card)
    """
    import shutil

    from engine.errors import ConfigError

    folder = Path(folder)
    if folder.exists() and not replaces(folder):
        raise ConfigError(f"{folder}: exists and was not written by newsbt; choose another folder or move it away")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.tmp")
    try:
        fill(staging)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


# Frames read from signal caches, kept by processes that read the same entries many times (a sweep's workers:
# ``keep_in_memory``). An entry's file name is the hash of its key, so its content never changes; the file's
# size and modification time are checked anyway, so one replaced or removed on disk is read (or computed) again.
_READ_FRAMES: OrderedDict[Path, tuple[tuple[int, int], pd.DataFrame, int]] = OrderedDict()
_READ_FRAMES_MAX_BYTES = [0]
_READ_FRAMES_LOCK = threading.Lock()


def keep_in_memory(max_bytes: int) -> None:
    """For a process that reads the same signals and hashes the same frames over and over (a sweep's worker):
    keep up to ``max_bytes`` of frames read from signal caches in memory (least recently used dropped first; 0,
    the default, keeps none; hits are counted in ``CACHE_STATS`` as before) and memoise the row hashes of frames
    of numbers too (see ``_ROW_HASHES``).

    >>> keep_in_memory(256 << 20)  # in a sweep worker
    """
    with _READ_FRAMES_LOCK:
        _READ_FRAMES_MAX_BYTES[0] = max_bytes
        _trim_read_frames()
    _MEMOISE_NUMBERS[0] = max_bytes > 0


def _trim_read_frames() -> None:  # under _READ_FRAMES_LOCK
    total = sum(size for _, _, size in _READ_FRAMES.values())
    while _READ_FRAMES and total > _READ_FRAMES_MAX_BYTES[0]:
        total -= _READ_FRAMES.popitem(last=False)[1][2]


def _read_cached(path: Path) -> pd.DataFrame | None:
    """The frame stored at ``path`` (None if there is none), from memory when ``keep_in_memory`` allows."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    stamp = (status.st_size, status.st_mtime_ns)
    with _READ_FRAMES_LOCK:
        kept = _READ_FRAMES.get(path)
        if kept is not None and kept[0] == stamp:
            _READ_FRAMES.move_to_end(path)
            return kept[1].copy(deep=False)  # copy-on-write: the caller's edits never reach the kept frame
    frame = pd.read_parquet(path)
    if not _READ_FRAMES_MAX_BYTES[0]:
        return frame
    size = int(frame.memory_usage(index=True, deep=False).sum())
    with _READ_FRAMES_LOCK:
        if size <= _READ_FRAMES_MAX_BYTES[0]:
            _READ_FRAMES[path] = (stamp, frame.copy(deep=False), size)
            _trim_read_frames()
    return frame


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
        frame = _read_cached(path)
        if frame is not None:
            CACHE_STATS[f"{name}.hit"] += 1
            return frame
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
