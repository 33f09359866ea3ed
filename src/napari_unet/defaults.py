"""Product defaults that the command line must know without importing torch."""

#: Optimiser steps of a training run without options (about 5-7 min on a 2-core laptop CPU with
#: the small preset; see docs/benchmarks.md for what they reach).
DEFAULT_STEPS = 2000
