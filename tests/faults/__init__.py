"""Fault-injection suite: one test per fault case, real parts (see issue 16)."""
