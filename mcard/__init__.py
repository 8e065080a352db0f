"""mcard: fetch, validate, size, smoke-test and document quantized LLM variants."""

__version__ = "0.1.0"
