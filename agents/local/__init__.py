"""The embedded default model: llama.cpp's server on SmolLM2, shared by every process."""
