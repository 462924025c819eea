"""Lowering, compilation, cost and memory analysis, and timing of jitted functions."""

from sepnets.compile.analysis import CompiledStats, compile_stats
from sepnets.compile.timing import Timing, time_compiled

__all__ = ['CompiledStats', 'Timing', 'compile_stats', 'time_compiled']
