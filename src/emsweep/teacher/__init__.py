"""The teacher: `emsweep data generate` writes a domain's correct and wrong files with a teacher model and a verifier.

It is a tool run before the pass, not a stage of it: it drives generation backends (generate/), fingerprints local
models as the judge does (judge/identity.py) and prices API calls with the OpenAI arm's tables (openai_ft/), so it
sits above the stages with the executors instead of inside data/ (a stage imports only the stages to its left).
Its output is ordinary files that a domain YAML (recipes/domains/) names and the data stage reads.
"""
