"""Would a small learned stage help the event patterns? Five-fold cross-validation on the dev split of
events_eval.csv only (the test split is never read): a TF-IDF (word 1-2-grams + character 2-4-grams, min_df 2)
logistic regression trained on four folds labels the fifth fold's items that no pattern decides (else they stay
``other``), with or without a confidence threshold. Prints dev-CV macro-F1 of the patterns alone, the learned
model alone and the two together (EVENTS_PROVENANCE.md, "After the first report"). About 10 s on one core.

    python tests/data/events_learned_cv.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_union

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from signals import events  # noqa: E402

FOLDS, SEED = 5, 0


def main() -> None:
    items = events.read_eval_set(events.EVAL_PATH)
    dev = items[items["split"] == "dev"].reset_index(drop=True)
    raw = [events._as_text(text) for text in dev["text"]]
    decided = np.array([events._pattern_type(text) for text in raw], dtype=object)
    patterns = np.where(decided == "", "other", decided)
    truth = dev["label"].to_numpy()
    # cashtags are no words: masked as one token, links dropped (as the patterns read them)
    texts = [events._CASHTAG.sub(" TKR ", events._without_links(text)) for text in raw]
    print(f"dev items: {len(dev)}; undecided by the patterns: {(decided == '').sum()} "
          f"({(truth[decided == ''] != 'other').sum()} of them labelled with an event type)")
    print(f"patterns alone (written against dev, so fitted): macro-F1 {f1_score(truth, patterns, average='macro'):.4f}")
    for regularisation in (4.0, 16.0):
        probabilities = np.zeros((len(dev), len(events.EVENT_TYPES)))
        folds = StratifiedKFold(FOLDS, shuffle=True, random_state=SEED)
        for train, held in folds.split(texts, truth):
            vectorizer = make_union(
                TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2, sublinear_tf=True),
            )
            model = LogisticRegression(C=regularisation, max_iter=3000)
            model.fit(vectorizer.fit_transform([texts[i] for i in train]), truth[train])
            columns = [list(model.classes_).index(name) for name in sorted(events.EVENT_TYPES)]
            probabilities[held] = model.predict_proba(vectorizer.transform([texts[i] for i in held]))[:, columns]
        names = np.array(sorted(events.EVENT_TYPES), dtype=object)
        learned, confidence = names[probabilities.argmax(axis=1)], probabilities.max(axis=1)
        print(f"C={regularisation:g}: learned alone macro-F1 {f1_score(truth, learned, average='macro'):.4f}")
        for threshold in (0.0, 0.5):
            combined = patterns.copy()
            rest = (decided == "") & (confidence >= threshold)
            combined[rest] = learned[rest]
            print(f"  patterns + learned for undecided items (confidence >= {threshold}): "
                  f"macro-F1 {f1_score(truth, combined, average='macro'):.4f}")


if __name__ == "__main__":
    main()
