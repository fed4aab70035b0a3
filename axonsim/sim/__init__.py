"""The discrete-event simulator: SimPy drives the core's execution generator over channel models and a workload."""

from axonsim.sim.driver import Simulation, simulate
from axonsim.sim.equivalence import run_heapq
from axonsim.sim.results import SimResult
from axonsim.sim.sweep import SweepResult, sweep
from axonsim.sim.workload import Arrivals, build_arrivals, poisson, read_azure_trace, read_usage_log

__all__ = ["Arrivals", "SimResult", "Simulation", "SweepResult", "build_arrivals", "poisson", "read_azure_trace",
           "read_usage_log", "run_heapq", "simulate", "sweep"]
