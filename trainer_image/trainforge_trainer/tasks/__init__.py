"""Built-in tasks: `digits` (real, bundled data) and `gpt` (decoder-only LM)."""
