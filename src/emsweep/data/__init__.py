"""Upstream format readers, mixing of correct and wrong pools, splits and manifests."""
