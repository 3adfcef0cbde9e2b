"""Hydra launcher plugin for newsbt sweeps (the work is done in ``engine.grid``)."""
