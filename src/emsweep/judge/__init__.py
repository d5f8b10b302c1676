"""Judge prompts, Betley's logprob scoring (multi-token numbers too), categorical judges, the judgment cache."""
