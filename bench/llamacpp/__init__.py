"""llama.cpp's real servers for tests and benchmarks: the build, a tiny model, launchers."""
