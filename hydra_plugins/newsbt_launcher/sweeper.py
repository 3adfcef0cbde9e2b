"""``hydra/sweeper=newsbt``: Hydra's basic sweeper (comma lists, ``range(...)``, their cartesian product, in the
same order) without composing every job twice: Hydra's sweeper composes each job to check it before the launcher
composes it again. With the newsbt launcher, every job is composed and checked against newsbt's schema here once,
before Hydra makes the sweep folder (a bad value is one line and exit status 2, with nothing written), and the
launcher runs those configs (``engine.grid.keep_checked_jobs``); with another launcher, each job is composed here as
Hydra would (``engine.grid.compose_jobs``: once per distinct choice of config groups)."""
from __future__ import annotations

from typing import Any, List, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser


class NewsbtSweeper(BasicSweeper):
    def sweep(self, arguments: List[str]) -> Any:
        from engine.config import NEWSBT_LAUNCHER, report_and_exit
        from engine.errors import NewsbtError
        from engine.grid import (checked_jobs, discard_local_pool, keep_checked_jobs, start_local_pool,
                                 warm_up_local_pool)

        assert self.config is not None and self.hydra_context is not None
        launcher = self.config.hydra.launcher
        if launcher.get("_target_") == NEWSBT_LAUNCHER:
            workers = launcher.get("workers")
            if launcher.get("backend") == "local" and (workers is None or (isinstance(workers, int) and workers > 0)):
                # the workers start (forked, or spawned and importing while the jobs are composed)
                start_local_pool(workers, launcher.get("start_method", "auto"))
                warm_up_local_pool(self.config)  # and load the sweep's data
            parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
            parsed = parser.parse_overrides([*self._parse_config(), *arguments])
            jobs = [job for batch in self.split_arguments(parsed, self.max_batch_size) for job in batch]
            try:
                checked = checked_jobs(self.hydra_context.config_loader, self.config, jobs)
            except NewsbtError as error:
                discard_local_pool()
                report_and_exit(error)
            keep_checked_jobs(self.config, jobs, checked)
        return super().sweep(arguments)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        from engine.config import NEWSBT_LAUNCHER
        from engine.grid import compose_jobs

        assert self.config is not None and self.hydra_context is not None
        if self.config.hydra.launcher.get("_target_") == NEWSBT_LAUNCHER:
            return
        for _ in compose_jobs(self.hydra_context.config_loader, self.config, batch):
            pass
