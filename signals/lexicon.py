"""Loughran–McDonald lexicon tone: the dictionary baseline for news sentiment.

Each text's tone is (positive − negative) / (positive + negative) LM words, 0 when it has none; per
(ticker, session) the provider reports the mean tone, the number of texts and their dispersion.
"""
from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from engine.errors import DataError
from engine.signal import ProviderContext, SignalProvider

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")  # Unicode letters, keeps "don't" whole


def read_wordlist(path: Path) -> frozenset[str]:
    """The upper-case words of one LM list file (``WORD,YEAR`` lines)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: word list not found") from None
    try:
        return _words(data)
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not ASCII at byte {error.start}") from None


@lru_cache(maxsize=8)
def _words(data: bytes) -> frozenset[str]:
    # Parsed once per content in a process (keyed by the bytes themselves): every run of a sweep reads the lists.
    lines = data.decode("ascii").splitlines()
    return frozenset(line.split(",")[0].strip().upper() for line in lines if line.strip())


def aggregate_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """Per (ticker, session) mean, count and population std of a per-item ``score`` column.

    >>> aggregate_scores(aligned.assign(score=tones))  # columns sentiment, sentiment_count, sentiment_dispersion
    """
    grouped = scores.dropna(subset=["score"]).groupby(["ticker", "session"], sort=True)["score"]
    frame = pd.DataFrame(
        {
            "sentiment": grouped.mean(),
            "sentiment_count": grouped.size().astype("float64"),
            "sentiment_dispersion": grouped.std(ddof=0),
        }
    )
    return frame


class LexiconSentiment(SignalProvider):
    """Mean Loughran–McDonald tone per (ticker, session); each item's tone is kept in news.parquet.

    >>> LexiconSentiment("loughran-mcdonald-wordlists", context).transform(aligned_news)
    >>> LexiconSentiment("/path/to/wordlists").transform(aligned_news)  # no context: a folder path
    """

    name = "lexicon"
    columns = ("sentiment", "sentiment_count", "sentiment_dispersion")
    item_columns = ("sentiment",)

    def __init__(self, wordlists: str, context: ProviderContext | None = None):
        self.wordlists = wordlists
        self.context = context

    @property
    def wordlist_dir(self) -> Path:
        """The word lists' folder: ``wordlists`` under the first data root holding it (with a context), else as given."""
        if self.context is None:
            return Path(self.wordlists)
        return self.context.find_folder(self.wordlists, "wordlists")

    def _lists(self) -> tuple[frozenset[str], frozenset[str]]:
        folder = self.wordlist_dir
        positive = read_wordlist(folder / "LoughranMcDonald_Positive.csv")
        negative = read_wordlist(folder / "LoughranMcDonald_Negative.csv")
        return positive, negative

    def params(self) -> dict:
        positive, negative = self._lists()
        digest = hashlib.sha256("\n".join(sorted(positive) + ["|"] + sorted(negative)).encode()).hexdigest()
        return {"provider": self.name, "wordlists_sha256": digest}

    def tone(self, texts: pd.Series) -> np.ndarray:
        """Tone of each text in [-1, 1]."""
        positive, negative = self._lists()
        out = np.zeros(len(texts))
        for i, text in enumerate(texts):
            words = _WORD.findall(text.upper())
            hits_positive = sum(w in positive for w in words)
            hits_negative = sum(w in negative for w in words)
            if hits_positive + hits_negative:
                out[i] = (hits_positive - hits_negative) / (hits_positive + hits_negative)
        return out

    def transform(self, news: pd.DataFrame) -> pd.DataFrame:
        scored = news[["ticker", "session"]].copy()
        unique = pd.Series(news["text"].unique())
        tones = pd.Series(self.tone(unique), index=unique.to_numpy())
        scored["score"] = news["text"].map(tones).to_numpy()
        scored.loc[news["text"].str.strip().eq("").to_numpy(), "score"] = np.nan
        return aggregate_scores(scored)
