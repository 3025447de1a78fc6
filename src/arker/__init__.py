"""Arker: fork throwaway Linux machines in constant time, run commands, sync files.

`import arker` loads the SDK only; no server or engine code.
"""

from __future__ import annotations

from arker.errors import ArkerError, ErrorCode

__all__ = ["ArkerError", "ErrorCode"]
__version__ = "0.1.0"
