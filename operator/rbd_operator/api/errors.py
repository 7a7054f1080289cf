"""Errors raised while reading a spec: each names the field at fault."""


class SpecError(ValueError):
    """A spec that can never converge as written (bad input, not a transient failure)."""

    def __init__(self, field: str, message: str, reason: str = "InvalidSpec") -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = reason
        self.message = f"{field}: {message}"


class Waiting(Exception):
    """Something the spec refers to is not there yet: report it and retry later."""

    def __init__(self, reason: str, message: str, delay: float = 10.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.delay = delay
