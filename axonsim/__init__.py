"""AxonSim: an LLM API gateway whose orchestration core also runs in a SimPy simulator."""

from axonsim import native

# Before any core module is imported: the compiled build, or the sources (see axonsim/native.py).
BUILD = native.choose()

from axonsim.config import Config, ConfigError, load_config, parse_config  # noqa: E402
from axonsim.execution import Call, Outcome, Result, Router, Wait  # noqa: E402

__all__ = ["BUILD", "Call", "Config", "ConfigError", "Outcome", "Result", "Router", "Wait", "load_config",
           "parse_config"]
__version__ = "0.1.0"
