"""The discrete-event simulator: SimPy drives the core's execution generator over channel models and a workload."""

from axonsim.sim.driver import Simulation, simulate
from axonsim.sim.results import SimResult
from axonsim.sim.sweep import SweepResult, sweep
from axonsim.sim.workload import Arrivals, poisson

__all__ = ["Arrivals", "SimResult", "Simulation", "SweepResult", "poisson", "simulate", "sweep"]
