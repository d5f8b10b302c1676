"""Question suites (Betley's YAML schema, domain held-out suites), the eval stage, and metrics."""
