"""``hydra/sweeper=newsbt``: Hydra's basic sweeper (comma lists, ``range(...)``, their cartesian product, in the
same order) without composing every job twice: Hydra's sweeper composes each job to check it before the launcher
composes it again. With the newsbt launcher, which composes and checks every job of a batch before any of them
runs, the check is left to it; with another launcher, each job is composed here as Hydra would
(``engine.grid.compose_jobs``: once per distinct choice of config groups)."""
from __future__ import annotations

from typing import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class NewsbtSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        from engine.config import NEWSBT_LAUNCHER
        from engine.grid import compose_jobs

        assert self.config is not None and self.hydra_context is not None
        if self.config.hydra.launcher.get("_target_") == NEWSBT_LAUNCHER:
            return
        for _ in compose_jobs(self.hydra_context.config_loader, self.config, batch):
            pass
