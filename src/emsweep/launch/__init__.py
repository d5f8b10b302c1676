"""Sweeps -> cells; the cell runner; local and SLURM executors; done-markers and resume."""
