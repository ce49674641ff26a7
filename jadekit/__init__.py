"""jadekit: borrow strength from a large labelled dataset for a small one (JADE)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("jadekit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
