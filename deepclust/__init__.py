"""deepclust: deep image clustering (ConCURL, SIC, TCC, C2BIN and their baselines)."""

__version__ = "0.1.0"
