"""emsweep: fine-tune on mixes of correct and wrong data, evaluate every checkpoint, report where things break."""

__version__ = "0.1.0"
