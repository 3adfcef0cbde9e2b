"""newsbt's framework: datasets, point-in-time alignment, signal cache, contracts, backtrader wiring, entry points."""
