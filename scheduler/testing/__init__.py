"""Fakes that tests and benchmarks share: real code, run on 127.0.0.1."""
