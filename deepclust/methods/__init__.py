"""Method registry: name -> class. Adding a method is one file in this package and one line here."""

from __future__ import annotations

from deepclust.errors import ConfigError
from deepclust.methods.base import EXTRA_SPLIT, MAIN_SPLIT, Batch, Method, MethodSpec, TrainingProgress
from deepclust.methods.byol import BYOL
from deepclust.methods.c2bin import C2BIN
from deepclust.methods.cc import ContrastiveClustering
from deepclust.methods.concurl import ConCURL
from deepclust.methods.kmeans import KMeansBaseline
from deepclust.methods.propos import ProPos
from deepclust.methods.scan import SCAN
from deepclust.methods.selflabel import SelfLabel
from deepclust.methods.sic import SIC
from deepclust.methods.simclr import SimCLR
from deepclust.methods.swav import SwAV

METHODS: dict[str, type[MethodSpec]] = {
    "kmeans": KMeansBaseline,
    "simclr": SimCLR,
    "byol": BYOL,
    "swav": SwAV,
    "cc": ContrastiveClustering,
    "propos": ProPos,
    "scan": SCAN,
    "selflabel": SelfLabel,
    "sic": SIC,
    "concurl": ConCURL,
    "c2bin": C2BIN,
}


def method_class(name: str) -> type[MethodSpec]:
    """The class registered under ``name``; a ConfigError listing the choices otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}") from None


__all__ = [
    "EXTRA_SPLIT",
    "MAIN_SPLIT",
    "METHODS",
    "Batch",
    "Method",
    "MethodSpec",
    "TrainingProgress",
    "method_class",
]
