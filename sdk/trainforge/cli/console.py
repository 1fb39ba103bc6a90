"""Shared rich consoles: results on stdout, diagnostics on stderr, never wrapped mid-line."""

from __future__ import annotations

import sys

from rich.console import Console

# Piped output (CI logs, `| less`) gets room for whole tables instead of rich's 80-column default.
_WIDTH = None if sys.stdout.isatty() else 160

out = Console(soft_wrap=True, highlight=False, width=_WIDTH)
err = Console(stderr=True, soft_wrap=True, highlight=False)
