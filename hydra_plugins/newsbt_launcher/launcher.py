"""``hydra/launcher=newsbt``: runs a multirun sweep through ``engine.grid`` (process pool or Ray tasks,
results in DuckDB, resumable). Hydra only finds launchers inside the ``hydra_plugins`` package, so this
module stays a thin adapter."""
from __future__ import annotations

from typing import Optional, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class NewsbtLauncher(Launcher):
    def __init__(self, backend: str, workers: Optional[int], ray_address: Optional[str], metric: str,
                 heatmap: Optional[Sequence[str]], screen_top_k: Optional[int] = None,
                 run_files: str = "all", start_method: str = "auto") -> None:
        self.options = {"backend": backend, "workers": workers, "ray_address": ray_address, "metric": metric,
                        "heatmap": list(heatmap) if heatmap else None, "screen_top_k": screen_top_k,
                        "run_files": run_files, "start_method": start_method}
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from engine.config import report_and_exit, validate_launcher
        from engine.errors import NewsbtError
        from engine.grid import launch_sweep

        assert self.config is not None and self.hydra_context is not None
        # `python -m engine.run -m` checked all this before Hydra started; checked again for any other caller,
        # before a run starts (a misspelt metric would otherwise fail only after every run).
        parameters = sorted({override.partition("=")[0].lstrip("+~") for job in job_overrides for override in job})
        try:
            validate_launcher(self.options, parameters)
        except NewsbtError as error:
            report_and_exit(error)
        return launch_sweep(self.hydra_context, self.config, job_overrides, initial_job_idx, **self.options)
