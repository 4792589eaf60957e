"""Typed failures a handler raises; each maps to one BusError code."""

from __future__ import annotations

import json
from typing import Any, ClassVar

#: The closed set of BusError codes, the same on every transport.
CODES = (
    "invalid_input",
    "contract_violation",
    "not_found",
    "timeout",
    "unavailable",
    "circuit_open",
    "capacity",
    "cell_failed",
    "internal",
)


class CellError(Exception):
    """A typed failure: the caller gets ``{code, message, details}``.

    Raise a subclass (``InvalidInput("name is empty")``), or ``CellError``
    itself with an explicit ``code``.
    """

    code: ClassVar[str] = "internal"

    def __init__(self, message: str, details: Any = None, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if code is not None:
            if code not in CODES:
                raise ValueError(f"unknown error code {code!r}; use one of {', '.join(CODES)}")
            self.code = code  # type: ignore[misc]

    def to_wire(self) -> dict[str, Any]:
        """The error as the host expects it in a reply frame."""
        wire: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            wire["details"] = self.details
        return wire

    @staticmethod
    def from_wire(error: dict[str, Any]) -> "CellError":
        """The error a host call failed with, as its typed subclass."""
        code = error.get("code", "internal")
        details = error.get("details")
        if isinstance(details, str):
            # The component boundary carries details as JSON text.
            try:
                details = json.loads(details)
            except ValueError:
                pass
        cls = _BY_CODE.get(code, Internal)
        return cls(error.get("message", ""), details)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidInput(CellError):
    """The request cannot be served as asked (bad values the schema allows)."""

    code = "invalid_input"


class ContractViolation(CellError):
    """A payload broke a contract, or a call was not granted."""

    code = "contract_violation"


class NotFound(CellError):
    """Nothing serves the requested cell, or the thing asked for does not exist."""

    code = "not_found"


class Timeout(CellError):
    """A deadline passed."""

    code = "timeout"


class Unavailable(CellError):
    """A dependency is down; retrying later may work."""

    code = "unavailable"


class CircuitOpen(CellError):
    """Calls to a failing target are paused by its circuit breaker."""

    code = "circuit_open"


class Capacity(CellError):
    """A cell is at its concurrency and queue limits."""

    code = "capacity"


class CellFailed(CellError):
    """A cell crashed or raised an unexpected exception."""

    code = "cell_failed"


class Internal(CellError):
    """A bug in the host or a cell."""

    code = "internal"


_BY_CODE: dict[str, type[CellError]] = {
    cls.code: cls
    for cls in (
        InvalidInput,
        ContractViolation,
        NotFound,
        Timeout,
        Unavailable,
        CircuitOpen,
        Capacity,
        CellFailed,
        Internal,
    )
}
