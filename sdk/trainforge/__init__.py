"""trainforge: declare a TrainingJob, train it with DDP/FSDP2 + AMP on Ray Train."""

from importlib.metadata import PackageNotFoundError, version

from .builder import TrainingJob
from .client import TrainingJobClient
from .spec import Task

try:
    __version__ = version("trainforge")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+local"

__all__ = ["Task", "TrainingJob", "TrainingJobClient", "__version__"]
