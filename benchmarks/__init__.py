"""Benchmarks: awqinfer side by side with llama.cpp and PyTorch (see run.py)."""
