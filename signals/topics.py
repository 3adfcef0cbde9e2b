"""LDA topics of news text: each (ticker, session) gets the mean topic mixture of its texts.

A gensim ``LdaModel`` (single process, fixed ``random_state``) is fitted on the distinct texts of the past, at
most ``max_training_texts`` of them (a sample drawn by each text's hash, so a fit's cost is bounded however large
the universe); ``transform`` infers each distinct text's mixture with a deterministic start, so a fitted model
gives every text the same mixture whatever else is in the frame and however often it is called.
"""
from __future__ import annotations

import hashlib
import re
import sys
import unicodedata
from typing import Any, Iterator

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.special import psi
from tqdm.auto import tqdm

from engine.config import Fraction, PositiveInt
from engine.errors import ConfigError
from engine.schema import canonical_signals, empty_signals
from engine.signal import SignalProvider

# gensim is imported only to fit (gensim.corpora.Dictionary, gensim.models.LdaModel): its import takes seconds, and
# every process that builds this provider (each run, each sweep worker) would pay for it. Its English stop words
# (gensim.parsing.preprocessing.STOPWORDS of the pinned gensim 4.4.0; a test checks they are the same) are
# therefore written out here.
GENSIM_STOPWORDS = frozenset({
    "a", "about", "above", "across", "after", "afterwards", "again", "against", "all", "almost", "alone", "along",
    "already", "also", "although", "always", "am", "among", "amongst", "amoungst", "amount", "an", "and", "another",
    "any", "anyhow", "anyone", "anything", "anyway", "anywhere", "are", "around", "as", "at", "back", "be", "became",
    "because", "become", "becomes", "becoming", "been", "before", "beforehand", "behind", "being", "below", "beside",
    "besides", "between", "beyond", "bill", "both", "bottom", "but", "by", "call", "can", "cannot", "cant", "co",
    "computer", "con", "could", "couldnt", "cry", "de", "describe", "detail", "did", "didn", "do", "does", "doesn",
    "doing", "don", "done", "down", "due", "during", "each", "eg", "eight", "either", "eleven", "else", "elsewhere",
    "empty", "enough", "etc", "even", "ever", "every", "everyone", "everything", "everywhere", "except", "few",
    "fifteen", "fifty", "fill", "find", "fire", "first", "five", "for", "former", "formerly", "forty", "found",
    "four", "from", "front", "full", "further", "get", "give", "go", "had", "has", "hasnt", "have", "he", "hence",
    "her", "here", "hereafter", "hereby", "herein", "hereupon", "hers", "herself", "him", "himself", "his", "how",
    "however", "hundred", "i", "ie", "if", "in", "inc", "indeed", "interest", "into", "is", "it", "its", "itself",
    "just", "keep", "kg", "km", "last", "latter", "latterly", "least", "less", "ltd", "made", "make", "many", "may",
    "me", "meanwhile", "might", "mill", "mine", "more", "moreover", "most", "mostly", "move", "much", "must", "my",
    "myself", "name", "namely", "neither", "never", "nevertheless", "next", "nine", "no", "nobody", "none", "noone",
    "nor", "not", "nothing", "now", "nowhere", "of", "off", "often", "on", "once", "one", "only", "onto", "or",
    "other", "others", "otherwise", "our", "ours", "ourselves", "out", "over", "own", "part", "per", "perhaps",
    "please", "put", "quite", "rather", "re", "really", "regarding", "same", "say", "see", "seem", "seemed",
    "seeming", "seems", "serious", "several", "she", "should", "show", "side", "since", "sincere", "six", "sixty",
    "so", "some", "somehow", "someone", "something", "sometime", "sometimes", "somewhere", "still", "such", "system",
    "take", "ten", "than", "that", "the", "their", "them", "themselves", "then", "thence", "there", "thereafter",
    "thereby", "therefore", "therein", "thereupon", "these", "they", "thick", "thin", "third", "this", "those",
    "though", "three", "through", "throughout", "thru", "thus", "to", "together", "too", "top", "toward", "towards",
    "twelve", "twenty", "two", "un", "under", "unless", "until", "up", "upon", "us", "used", "using", "various",
    "very", "via", "was", "we", "well", "were", "what", "whatever", "when", "whence", "whenever", "where",
    "whereafter", "whereas", "whereby", "wherein", "whereupon", "wherever", "whether", "which", "while", "whither",
    "who", "whoever", "whole", "whom", "whose", "why", "will", "with", "within", "without", "would", "yet", "you",
    "your", "yours", "yourself", "yourselves"
})

# Fillers of headlines and tweets that gensim's STOPWORDS lacks: the retweet marker, the remains of "&amp"
# and of truncated links ("http…"), and reporting verbs/labels that carry no topic ("X says Y", "BREAKING:").
NEWS_STOPWORDS = frozenset({"rt", "amp", "http", "https", "www", "says", "said", "new", "breaking", "update"})
STOP_WORDS = GENSIM_STOPWORDS | NEWS_STOPWORDS

# Removed before splitting into words. Cashtags ($AAPL, $BRK.B) are dropped, not kept as "aapl": every
# StockNet tweet carries its own ticker's cashtag (it is the search key), so the token would only re-encode
# the row's ticker and LDA would spend topics on tickers instead of themes. Hashtags keep their word (#Oil -> oil).
_REMOVE = re.compile(
    r"(?:https?://|www\.)\S*"            # links, including truncated ones ("http://…")
    r"|&(?:#\d+|#x[0-9a-f]+|[a-z][a-z0-9]*);"  # HTML entities (&amp; &#39; &eacute;)
    r"|@\w+"                             # @mentions
    r"|\$[^\W\d_]+(?:\.[^\W\d_]+)?"      # cashtags
)
_WORD = re.compile(r"[^\W_]+")  # runs of Unicode letters and digits; apostrophes, hyphens, '#' split words


def tokenize(text: str) -> list[str]:
    """Lower-cased topic words of ``text``: Unicode letters only (é, ß, CJK runs kept whole), without links,
    @mentions, cashtags, HTML entities, words containing a digit (5, g20, 3rd), words under 2 letters and
    ``STOP_WORDS``.

    >>> tokenize("Zürich's café & crème brûlée rises 5% http://x.co @bob RT $AAPL")
    ['zürich', 'café', 'crème', 'brûlée', 'rises']
    """
    text = _REMOVE.sub(" ", unicodedata.normalize("NFC", str(text)).lower())
    return [w for w in _WORD.findall(text) if len(w) >= 2 and w.isalpha() and w not in STOP_WORDS]


def _tokenizer_digest() -> str:
    """Identifies the tokenisation rules, so cached topics are recomputed when they change."""
    rules = "\n".join([_REMOVE.pattern, _WORD.pattern, "NFC lower isalpha len>=2", *sorted(STOP_WORDS)])
    return hashlib.sha256(rules.encode()).hexdigest()[:16]


def text_keys(texts: pd.Series | list[str]) -> np.ndarray:
    """A stable pseudo-random key per text: the first 8 bytes of the BLAKE2b digest of its UTF-8, as uint64 (the
    same on every machine, Python and pandas version, and independent of the other texts).

    >>> text_keys(["Oil prices fall"])  # array([...], dtype=uint64)
    """
    return np.fromiter((int.from_bytes(hashlib.blake2b(str(text).encode("utf-8"), digest_size=8).digest(), "big")
                        for text in texts), dtype=np.uint64, count=len(texts))


def training_sample(texts: pd.Series, limit: int | None) -> pd.Series:
    """The ``limit`` texts of distinct ``texts`` with the smallest ``text_keys`` (all of them when ``limit`` is None
    or not below their number), in their given order: a uniform sample without replacement that depends only on
    the set of texts, not on their order (a tie of two 64-bit keys, practically impossible, goes to the earlier).

    >>> training_sample(pd.Series(["a b", "c d", "e f"]), 2)  # the two texts whose digests are smallest
    """
    if limit is None or len(texts) <= limit:
        return texts
    chosen = np.argsort(text_keys(texts), kind="stable")[:limit]
    return texts.iloc[np.sort(chosen)]


def _progress() -> bool:
    return sys.stderr.isatty()


class _CountingCorpus:
    """A corpus that ticks a progress bar per document gensim reads (once per pass)."""

    def __init__(self, corpus: list, bar: tqdm):
        self.corpus, self.bar = corpus, bar

    def __len__(self) -> int:
        return len(self.corpus)

    def __iter__(self) -> Iterator:
        for document in self.corpus:
            self.bar.update(1)
            yield document


def infer_mixtures(bows: list[list[tuple[int, int]]], expected_log_beta: np.ndarray, alpha: np.ndarray,
                   iterations: int, gamma_threshold: float) -> np.ndarray:
    """Topic mixtures (rows sum to 1) of non-empty bag-of-words documents under a fitted LDA.

    The variational E-step of gensim's ``LdaModel.inference``, vectorised over documents, with every
    document started at gamma = 1 (the mean of gensim's random Gamma(100, 1/100) start) instead of a draw
    from the model's RNG: the result is then a function of the document alone. ``expected_log_beta`` is
    ``exp(E[log beta])`` (``LdaModel.expElogbeta``), shape (topics, vocabulary).

    >>> infer_mixtures([dictionary.doc2bow(tokens)], lda.expElogbeta, lda.alpha, 50, 0.001)
    """
    beta = np.asarray(expected_log_beta, dtype=np.float64)
    topics, vocabulary = beta.shape
    lengths = np.fromiter((len(b) for b in bows), dtype=np.int64, count=len(bows))
    ids = np.fromiter((i for b in bows for i, _ in b), dtype=np.int64, count=int(lengths.sum()))
    counts = np.fromiter((c for b in bows for _, c in b), dtype=np.float64, count=int(lengths.sum()))
    matrix = sparse.csr_matrix((counts, ids, np.concatenate([[0], np.cumsum(lengths)])), shape=(len(bows), vocabulary))
    epsilon = np.finfo(np.float32).eps  # gensim's default dtype's eps, as its inference adds
    gamma = np.ones((len(bows), topics))
    todo = np.arange(len(bows))
    for _ in range(iterations):
        if todo.size == 0:
            break
        rows, current = matrix[todo], gamma[todo]
        expected_theta = np.exp(psi(current) - psi(current.sum(axis=1, keepdims=True)))
        owner = np.repeat(np.arange(todo.size), np.diff(rows.indptr))
        norm = np.einsum("ik,ki->i", expected_theta[owner], beta[:, rows.indices]) + epsilon
        rows.data = rows.data / norm
        updated = alpha + expected_theta * (rows @ beta.T)
        gamma[todo] = updated
        todo = todo[np.abs(updated - current).mean(axis=1) >= gamma_threshold]  # gensim's per-document stop
    return gamma / gamma.sum(axis=1, keepdims=True)


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"signals.topics.{key}: must be a positive integer, got {value!r}")
    return int(value)


class TopicModel(SignalProvider):
    """LDA topic mixture per (ticker, session): columns ``topic_0..topic_{k-1}`` (mean mixture of the
    session's texts, sums to 1) and ``topics_count`` (texts with at least one known word).

    ``max_training_texts`` bounds the distinct texts a fit learns from (``training_sample``: drawn by each text's
    hash, so the same past gives the same sample in any row order); null fits on all. Inference still covers
    every text. The LDA fit costs about linearly in its texts, so at hundreds of tickers the cap, not the
    universe, sets the cost of each walk-forward window.

    >>> TopicModel(num_topics=10, no_below=5, no_above=0.5, keep_n=20000, passes=2, iterations=50,
    ...            random_state=0, chunksize=2000, max_training_texts=20000).fit(past_news).transform(window_news)
    """

    name = "topics"
    learned = True  # fitted per walk-forward window on the news before it (needs: the aligned news)

    # The annotations are the parameters' schema (engine.config checks signals.topics.* against them).
    def __init__(self, num_topics: PositiveInt, no_below: PositiveInt, no_above: Fraction, keep_n: PositiveInt | None,
                 passes: PositiveInt, iterations: PositiveInt, random_state: int, chunksize: PositiveInt,
                 max_training_texts: PositiveInt | None):
        self.num_topics = num_topics
        self.no_below = no_below
        self.no_above = no_above
        self.keep_n = keep_n
        self.passes = passes
        self.iterations = iterations
        self.random_state = random_state
        self.chunksize = chunksize
        self.max_training_texts = max_training_texts
        self.columns = tuple(f"topic_{k}" for k in range(_positive_int(num_topics, "num_topics"))) + ("topics_count",)

    @property
    def topic_columns(self) -> list[str]:
        """The mixture columns, without ``topics_count``."""
        return list(self.columns[:-1])

    def params(self) -> dict[str, Any]:
        keys = ["num_topics", "no_below", "no_above", "keep_n", "passes", "iterations", "random_state", "chunksize",
                "max_training_texts"]
        return {"provider": self.name, **{k: getattr(self, k) for k in keys}, "tokenizer": _tokenizer_digest()}

    def _check_params(self) -> None:
        for key in ("no_below", "passes", "iterations", "chunksize"):
            _positive_int(getattr(self, key), key)
        for key in ("keep_n", "max_training_texts"):
            if getattr(self, key) is not None:
                _positive_int(getattr(self, key), key)
        if isinstance(self.no_above, bool) or not isinstance(self.no_above, (int, float)) or not 0 < self.no_above <= 1:
            raise ConfigError(f"signals.topics.no_above: must be a fraction in (0, 1], got {self.no_above!r}")
        if isinstance(self.random_state, bool) or not isinstance(self.random_state, (int, np.integer)):
            raise ConfigError(f"signals.topics.random_state: must be an integer (LDA must be reproducible), "
                              f"got {self.random_state!r}")

    def fit(self, news: pd.DataFrame) -> "TopicModel":
        """Learn the vocabulary and the topics from the distinct texts of ``news`` (each text once, ordered
        by its first timestamp, then by text, so row order and repeats across tickers do not matter), or from
        ``max_training_texts`` of them drawn by ``training_sample``."""
        from gensim.corpora import Dictionary
        from gensim.models import LdaModel

        self._check_params()
        ordered = news[["timestamp", "text"]].assign(text=news["text"].fillna("").astype(str))
        texts = ordered.sort_values(["timestamp", "text"], kind="stable").drop_duplicates("text")["text"]
        texts = training_sample(texts, self.max_training_texts)
        documents = [tokenize(t) for t in tqdm(texts, desc="topics: tokenise", disable=not _progress(), leave=False)]
        documents = [d for d in documents if d]
        dictionary = Dictionary(documents)
        dictionary.filter_extremes(no_below=self.no_below, no_above=self.no_above, keep_n=self.keep_n)
        corpus = [bow for bow in (dictionary.doc2bow(d) for d in documents) if bow]
        if not corpus:
            raise ConfigError(
                f"signals.topics.no_below: no word is in at least {self.no_below} and at most {self.no_above:.0%} "
                f"of the {len(texts)} distinct training texts; lower signals.topics.no_below or raise "
                f"signals.topics.no_above"
            )
        with tqdm(total=len(corpus) * self.passes, desc="topics: LDA", disable=not _progress(), leave=False) as bar:
            self.model_ = LdaModel(
                corpus=_CountingCorpus(corpus, bar), id2word=dictionary, num_topics=self.num_topics,
                passes=self.passes, iterations=self.iterations, chunksize=self.chunksize,
                random_state=int(self.random_state), eval_every=None,  # perplexity logging costs a full E-step
            )
        self.dictionary_ = dictionary
        self.n_texts_ = len(corpus)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError("TopicModel: call fit before transform or top_words")

    def mixtures(self, texts: pd.Series | list[str]) -> np.ndarray:
        """Topic mixture of each text, shape (texts, topics); NaN rows for texts without a known word.

        >>> model.mixtures(["Oil prices fall"])
        """
        self._check_fitted()
        bows = [self.dictionary_.doc2bow(tokenize(t))
                for t in tqdm(list(texts), desc="topics: infer", disable=not _progress(), leave=False)]
        known = np.array([bool(b) for b in bows], dtype=bool)
        out = np.full((len(bows), self.num_topics), np.nan)
        if known.any():
            out[known] = infer_mixtures([b for b in bows if b], self.model_.expElogbeta, self.model_.alpha,
                                        self.iterations, self.model_.gamma_threshold)
        return out

    def transform(self, news: pd.DataFrame) -> pd.DataFrame:
        """Mean topic mixture and count of known texts per (ticker, session); sessions whose texts have no
        known word get no row (like texts with no tone in ``signals.lexicon``)."""
        self._check_fitted()
        if news.empty:
            return empty_signals(list(self.columns))
        texts = news["text"].fillna("").astype(str)
        distinct = pd.Index(pd.unique(texts))  # each distinct text is inferred once
        per_text = self.mixtures(distinct)
        items = pd.DataFrame(per_text[distinct.get_indexer(texts)], columns=self.topic_columns)
        items["ticker"] = news["ticker"].to_numpy()
        items["session"] = news["session"].array
        items = items.dropna(subset=self.topic_columns[:1])
        if items.empty:
            return empty_signals(list(self.columns))
        grouped = items.groupby(["ticker", "session"], sort=True)
        frame = grouped[self.topic_columns].mean()
        frame["topics_count"] = grouped.size().astype("float64")
        return canonical_signals(frame)

    def top_words(self, n: int = 8) -> dict[int, list[str]]:
        """The ``n`` most probable words of each topic.

        >>> model.top_words(5)  # {0: ['oil', 'prices', ...], 1: [...], ...}
        """
        self._check_fitted()
        return {k: [word for word, _ in self.model_.show_topic(k, topn=n)] for k in range(self.num_topics)}

    def describe(self) -> pd.DataFrame:
        """What reports show about the fitted model (the run's topics.csv): each ``topic`` and its top ``words``,
        space-separated."""
        return pd.DataFrame([{"topic": topic, "words": " ".join(words)} for topic, words in self.top_words().items()])
