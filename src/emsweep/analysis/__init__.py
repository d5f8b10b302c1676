"""Aggregation of metrics, thresholds, early stopping, LoRA vs full, plots, and the HTML report."""
