"""derisk: plan research roadmaps as exact MDPs, with costs from fitted scaling laws."""

from importlib import metadata

try:
    __version__ = metadata.version("derisk")
except metadata.PackageNotFoundError:  # running from a checkout without installing
    __version__ = "0.1.0+checkout"
