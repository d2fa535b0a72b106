"""llama.cpp helpers for the benchmarks and tests: the real llama-server, a model for it."""
