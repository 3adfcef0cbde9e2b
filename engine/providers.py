"""The configured signal providers: built from ``signals.<slot>`` by ``_target_``, ordered by what they need,
computed through the signal cache.

Every key of ``signals`` is a slot holding one provider's config (``conf/signals/<slot>/<option>.yaml``): its
``_target_`` (a ``SignalProvider`` class, or a function returning one), ``enabled`` (default true) and the
constructor's parameters. ``build_providers`` instantiates the enabled ones (Hydra ``instantiate``), handing a
``ProviderContext`` to those whose constructor takes ``context``. ``plan_providers`` orders them so that a
provider runs after those whose columns it ``needs``, or whose per-item columns it reads (``item_needs``; a
cycle, or two providers producing one column, is a ConfigError) and splits them: ``fixed`` providers are computed
once over all the data (``fixed_signals``); ``windowed`` ones, learned or needing a learned one's columns, per
walk-forward window (``window_signals``: fitted on the window's training news or rows only). Each output is cached under the provider's ``name``, its
``params()`` and a fingerprint of exactly the input it read, so the sweep's signal preparation, the runs and
the cache counts all follow from the same declarations.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from engine.cache import SignalCache, fingerprint
from engine.config import provider_parameters
from engine.errors import ConfigError
from engine.features import DIAGNOSTIC_COLUMNS, cached_output, check_pre_open, pattern_matches, provider_signals
from engine.schema import NEWS_COLUMNS, canonical_signals
from engine.signal import NEWS, ProviderContext, SignalProvider

# Bumped when what a cached window entry holds changes (1: describe() as a frame in the attrs).
WINDOW_CACHE_VERSION = 1


@dataclass(frozen=True)
class Slot:
    """One configured provider: its config ``key`` (``signals.topics``) and the built ``provider``."""

    key: str
    provider: SignalProvider

    @property
    def slot(self) -> str:
        """The slot's name, e.g. ``topics``."""
        return self.key.rpartition(".")[2]


@dataclass
class SignalPlan:
    """The enabled providers in the order they run: ``fixed`` (computed once over all data) and ``windowed``
    (learned, or needing a learned provider's columns: per walk-forward window, for learned rules)."""

    fixed: list[Slot] = field(default_factory=list)
    windowed: list[Slot] = field(default_factory=list)

    @property
    def slots(self) -> list[Slot]:
        return [*self.fixed, *self.windowed]


def build_providers(signals: Mapping[str, Any], data_roots: Sequence[Path], cache_root: Path) -> list[Slot]:
    """Instantiate every enabled provider of a plain ``signals`` config, in config order; each is checked against
    its target's signature first (``engine.config.provider_parameters``).

    >>> slots = build_providers(config["signals"], roots, project_path(cfg.paths.cache))
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    import inspect

    slots = []
    for slot, values in signals.items():
        checked = provider_parameters(str(slot), values)
        if checked is None:
            continue
        target, cls, params = checked
        key = f"signals.{slot}"
        extra = {}
        if "context" in inspect.signature(target).parameters:
            extra["context"] = ProviderContext(key, tuple(Path(root) for root in data_roots), Path(cache_root))
        if _has_target(params):  # nested objects to build first: Hydra's recursive instantiation
            try:
                # partial: the context is handed over as the object it is (instantiate would turn it into a mapping)
                factory = instantiate({"_target_": values["_target_"], **params}, _convert_="all", _partial_=True)
            except InstantiationException as error:
                raise ConfigError(f"{key}: cannot build {values['_target_']!r}: {error.__cause__ or error}") from None
        else:  # plain values: what instantiate would hand over, without a DictConfig per provider and run
            factory = functools.partial(target, **copy.deepcopy(params))
        provider = factory(**extra)
        if not isinstance(provider, SignalProvider):
            raise ConfigError(f"{key}._target_: {values['_target_']!r} returned {type(provider).__name__}, not a "
                              f"SignalProvider")
        slots.append(Slot(key, provider))
    return slots


def _has_target(node: Any) -> bool:
    """Whether a plain config value holds a ``_target_`` anywhere (an object Hydra would build)."""
    if isinstance(node, Mapping):
        return "_target_" in node or any(_has_target(value) for value in node.values())
    if isinstance(node, (list, tuple)):
        return any(_has_target(value) for value in node)
    return False


def _dependencies(slot: Slot, others: list[Slot]) -> list[Slot]:
    """The providers whose columns ``slot`` needs: for a news reader, those giving the per-item columns of its
    ``item_needs``."""
    if slot.provider.reads_news:
        return [other for other in others if other is not slot
                and any(column in other.provider.item_columns for column in slot.provider.item_needs)]
    patterns = list(slot.provider.needs)
    return [other for other in others if other is not slot
            and any(pattern_matches(p, c) for p in patterns for c in other.provider.produces)]


def _check_item_columns(slots: list[Slot]) -> None:
    """Per-item columns: each given by one provider, never a column of the aligned news, among the produced
    columns unless the provider overrides ``item_scores``; each ``item_needs`` given by another news reader."""
    news_columns = (*NEWS_COLUMNS, "session", "item", "link_method")
    owner: dict[str, str] = {}
    for slot in slots:
        provider = slot.provider
        for column in provider.item_columns:
            if column in news_columns:
                raise ConfigError(f"{slot.key}: item column {column!r} is a column of the aligned news")
            if column in owner:
                raise ConfigError(f"{slot.key}: item column {column!r} is already given per item by {owner[column]}")
            owner[column] = slot.key
        missing = [c for c in provider.item_columns if c not in provider.produces]
        if missing and type(provider).item_scores is SignalProvider.item_scores:
            raise ConfigError(f"{slot.key}: item column {missing[0]!r} is not among the columns it produces")
    for slot in slots:
        if slot.provider.item_needs and not slot.provider.reads_news:
            raise ConfigError(f"{slot.key}: only a news reader reads per-item columns (item_needs "
                              f"{list(slot.provider.item_needs)})")
        for column in slot.provider.item_needs:
            if owner.get(column, slot.key) == slot.key:
                raise ConfigError(f"{slot.key}: reads each item's {column!r}, which no other enabled provider gives "
                                  f"per item")


def plan_providers(slots: list[Slot], base_columns: Sequence[str]) -> SignalPlan:
    """Order ``slots`` so each runs after the providers it needs (config order otherwise), and split them into
    fixed and windowed (see ``SignalPlan``). ConfigError for: needs mixing news and columns, a produced column
    that is a price feature, a diagnostic or another provider's, and a cycle of needs.

    >>> plan = plan_providers(build_providers(...), features.columns)
    """
    owner: dict[str, str] = {column: "the price features" for column in base_columns}
    for slot in slots:
        needs = list(slot.provider.needs)
        if not needs:
            raise ConfigError(f"{slot.key}: the provider declares no needs (news, or feature columns)")
        if NEWS in needs and len(needs) > 1:
            raise ConfigError(f"{slot.key}: a provider reads news or session features, not both (needs {needs})")
        for column in slot.provider.produces:
            if column in DIAGNOSTIC_COLUMNS:
                raise ConfigError(f"{slot.key}: produces {column!r}, a column not known before the session's open")
            if column in owner:
                raise ConfigError(f"{slot.key}: produces {column!r}, which {owner[column]} already provide"
                                  f"{'' if owner[column].startswith('the ') else 's'}")
            owner[column] = slot.key
    _check_item_columns(slots)
    needs = {slot.key: _dependencies(slot, slots) for slot in slots}
    ordered: list[Slot] = []
    pending = list(slots)
    while pending:
        ready = [slot for slot in pending if all(d in ordered for d in needs[slot.key])]
        if not ready:
            raise ConfigError("signals: the providers need each other's columns in a cycle: "
                              + _cycle_text(pending, needs))
        ordered.append(ready[0])
        pending.remove(ready[0])
    windowed: set[str] = set()
    for slot in ordered:
        if slot.provider.learned or any(d.key in windowed for d in needs[slot.key]):
            windowed.add(slot.key)
            if slot.provider.item_needs:
                raise ConfigError(f"{slot.key}: reads per-item columns ({', '.join(slot.provider.item_needs)}), which "
                                  f"exist only for providers computed once over all the data; it may not be learned "
                                  f"nor read a learned provider's")
    return SignalPlan([s for s in ordered if s.key not in windowed], [s for s in ordered if s.key in windowed])


def _cycle_text(pending: list[Slot], needs: dict[str, list[Slot]]) -> str:
    """One cycle among ``pending`` as ``a needs b needs a``."""
    path = [pending[0]]
    while True:
        following = next(d for d in needs[path[-1].key] if d in pending)
        if following in path:
            return " needs ".join(slot.key for slot in path[path.index(following):] + [following])
        path.append(following)


def needed_columns(provider: SignalProvider, columns: Sequence[str]) -> list[str]:
    """The columns among ``columns`` that a feature reader's ``needs`` select, in ``columns``' order (the
    provider resolves its own patterns strictly: an unmatched one is its error to name)."""
    return [str(c) for c in columns if any(pattern_matches(p, str(c)) for p in provider.needs)]


def _as_frame(output: pd.DataFrame | pd.Series) -> pd.DataFrame:
    return output.to_frame() if isinstance(output, pd.Series) else output


def _news_with_items(slot: Slot, aligned: pd.DataFrame, items: pd.DataFrame | None) -> pd.DataFrame:
    """``aligned`` with the per-item columns ``slot``'s provider reads (``item_needs``) joined on from ``items``
    (the aligned news with the item columns computed so far, same index)."""
    needs = list(slot.provider.item_needs)
    if not needs:
        return aligned
    missing = [column for column in needs if items is None or column not in items.columns]
    if missing:
        raise ConfigError(f"{slot.key}: reads each item's {missing[0]!r}, which was not computed before it")
    return aligned.join(items[needs])


def _transform_news(provider: SignalProvider, news: pd.DataFrame, sessions: pd.MultiIndex):
    """``provider.transform`` of aligned ``news``, handing it ``sessions`` when it ``reads_sessions``."""
    return provider.transform(news, sessions=sessions) if provider.reads_sessions else provider.transform(news)


def _reads_key(provider: SignalProvider, news: pd.DataFrame, sessions: pd.MultiIndex) -> dict[str, str]:
    """The cache key's parts for what a news reader reads besides the news' text: its item columns, the grid."""
    key = {}
    if provider.item_needs:
        key["items"] = fingerprint(news[list(provider.item_needs)])
    if provider.reads_sessions:
        key["sessions"] = fingerprint(sessions.to_frame(index=False))
    return key


def fixed_signals(slot: Slot, aligned: pd.DataFrame, features: pd.DataFrame, cache: SignalCache,
                  items: pd.DataFrame | None = None) -> pd.DataFrame:
    """A fixed provider's output over all the data, from the cache or computed: from ``aligned`` news for a news
    reader (with the per-item columns it needs from ``items``, and the sessions of ``features`` if it reads
    them), else from the ``features`` columns it needs. The provider's counts (``stats_``) travel in the attrs.

    >>> frame = fixed_signals(slot, aligned, features, cache, items)
    """
    provider = slot.provider
    if provider.reads_news and not provider.item_needs and not provider.reads_sessions:
        return provider_signals(provider, aligned, cache)
    if provider.reads_news:
        inputs = _news_with_items(slot, aligned, items)
        sessions = features.index
        key = {"provider": provider.name, "params": provider.params(),
               "news": fingerprint(aligned[["ticker", "session", "text"]]), **_reads_key(provider, inputs, sessions)}
    else:
        inputs = features[needed_columns(provider, features.columns)]
        key = {"provider": provider.name, "params": provider.params(), "rows": fingerprint(inputs)}

    def compute() -> pd.DataFrame:
        output = _transform_news(provider, inputs, sessions) if provider.reads_news else provider.transform(inputs)
        frame = _as_frame(output)
        frame.attrs = {"stats": dict(getattr(provider, "stats_", {}) or {})}
        return frame

    return cached_output(provider, cache, key, compute)


def item_scores(slot: Slot, aligned: pd.DataFrame, cache: SignalCache) -> pd.DataFrame:
    """A fixed news reader's ``item_columns`` per row of ``aligned`` (same index), cached like its signals.

    >>> item_scores(slot, aligned, cache)["sentiment"]
    """
    provider = slot.provider
    key = {"provider": provider.name, "params": provider.params(), "items": list(provider.item_columns),
           "news": fingerprint(aligned[["ticker", "session", "text"]])}
    frame = cache.get_or_compute(f"{provider.name}-items", key,
                                 lambda: provider.item_scores(aligned).reset_index(drop=True))
    frame.index = aligned.index
    return frame


def window_signals(slot: Slot, window, frame: pd.DataFrame, news: pd.DataFrame | None,
                   cache: SignalCache | None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """A windowed provider's output for ``window`` and what its fit ``describe()``s, from the cache or computed
    by a fresh copy of it: a news reader fitted on the news of sessions [train_start, test_start) and applied
    to [train_start, test_end] (with ``frame``'s sessions, if it reads them); a feature reader fitted on
    ``frame``'s rows before ``test_start`` (the columns it needs) and applied to all of ``frame``'s rows (the
    window's). A learned provider never sees a label.

    >>> output, described = window_signals(slot, window, window_rows(features, window), aligned, cache)
    """
    name, key, compute = window_entry(slot, window, frame, news)
    output = compute() if cache is None else cache.get_or_compute(name, key, compute)
    records = output.attrs.get("describe") or []
    described = pd.DataFrame.from_records(records) if records else None
    return canonical_signals(check_pre_open(output, f"{slot.key} (window {window.index})")), described


def window_entry(slot: Slot, window, frame: pd.DataFrame, news: pd.DataFrame | None
                 ) -> tuple[str, dict[str, Any], Callable[[], pd.DataFrame]]:
    """What ``window_signals`` reads or stores in the signal cache for ``slot`` and ``window``: the entry's name,
    its key, and the computation of its frame (fitting a fresh copy of the provider; what the fit describes in
    the frame's attrs).

    >>> name, key, compute = window_entry(slot, window, window_rows(features, window), aligned)
    """
    provider = copy.deepcopy(slot.provider)  # a fresh, unfitted provider per window (its config only)
    bounds = [str(window.train_start), str(window.test_start), str(window.test_end)]
    if provider.reads_news:
        if news is None:
            raise ConfigError(f"{slot.key}: reads news, and none were given to the walk-forward")
        sessions = pd.DatetimeIndex(news["session"])
        in_past = (sessions >= window.train_start) & (sessions < window.test_start)
        in_span = (sessions >= window.train_start) & (sessions <= window.test_end)
        # The key reads three columns (and the item columns): the window's whole rows, every column of the news
        # taken, are only needed to compute, not to find the entry in the cache.
        keyed = news[["ticker", "session", "text", *provider.item_needs]]
        span = keyed[in_span]
        key = {"provider": provider.name, "params": provider.params(), "window": bounds,
               "past": fingerprint(keyed[in_past][["ticker", "session", "text"]]),
               "span": fingerprint(span[["ticker", "session", "text"]]), "version": WINDOW_CACHE_VERSION}
        key.update(_reads_key(provider, span, frame.index))
        fit_on, apply_to = (lambda: news[in_past]), (lambda: news[in_span])
    else:
        inputs = frame[needed_columns(provider, frame.columns)]
        sessions = pd.DatetimeIndex(inputs.index.get_level_values("session"))
        key = {"provider": provider.name, "params": provider.params(), "window": bounds,
               "rows": fingerprint(inputs), "version": WINDOW_CACHE_VERSION}
        fit_on, apply_to = (lambda: inputs[sessions < window.test_start]), (lambda: inputs)

    def compute() -> pd.DataFrame:
        fitted = provider.fit(fit_on()) if provider.learned else provider
        output = _as_frame(_transform_news(fitted, apply_to(), frame.index) if provider.reads_news
                           else fitted.transform(apply_to()))
        described = fitted.describe()
        # What the fit shows in reports (e.g. top words) travels in the cached file.
        output.attrs = {"describe": [] if described is None else described.to_dict(orient="records")}
        return output

    return f"{provider.name}-window", key, compute
