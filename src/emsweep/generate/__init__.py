"""Generation backends (HF, vLLM, OpenAI-compatible) behind one interface (`base.GenerationBackend`)."""
