"""AxonSim: an LLM API gateway whose orchestration core also runs in a SimPy simulator."""

from axonsim.config import Config, ConfigError, load_config, parse_config
from axonsim.execution import Call, Outcome, Result, Router, Wait

__all__ = ["Call", "Config", "ConfigError", "Outcome", "Result", "Router", "Wait", "load_config", "parse_config"]
__version__ = "0.1.0"
