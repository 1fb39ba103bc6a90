"""Shared rich consoles: results on stdout, diagnostics on stderr, never wrapped mid-line."""

from __future__ import annotations

from rich.console import Console

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)
