"""Exceptions raised by the sandbox host.

Guest faults (a machine that throws, loops, eats memory or is denied) are *values*: they come back
as a :class:`runtime.limits.Outcome` on a round, never as an exception. What is raised here is
either bad input from the uploader (a bundle or machine that cannot be accepted) or a fault of the
host itself.

::

    SandboxError                 root of everything this package raises
    ├── BundleError              the upload cannot be bundled (syntax error, forbidden import, size)
    ├── InvalidMachineError      the bundle loads but is not a usable machine module
    └── HostError                a fault of the host (esbuild missing, protocol violation, bug)
        └── ProtocolError        the guest answered something that does not follow host.d.ts
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BundleError",
    "Diagnostic",
    "HostError",
    "InvalidMachineError",
    "ProtocolError",
    "SandboxError",
]


class SandboxError(Exception):
    """Root of the runtime's exception tree."""


@dataclass(frozen=True)
class Diagnostic:
    """One problem in an upload, located where the bundler found it."""

    message: str
    file: str | None = None
    line: int | None = None
    column: int | None = None
    line_text: str | None = None

    def __str__(self) -> str:
        if self.file is None:
            return self.message
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.message}"


class BundleError(SandboxError):
    """The upload cannot be turned into a bundle. ``code`` is stable and machine-readable."""

    def __init__(self, code: str, message: str, diagnostics: tuple[Diagnostic, ...] = ()) -> None:
        self.code = code
        self.diagnostics = diagnostics
        detail = "; ".join(str(d) for d in diagnostics)
        super().__init__(f"{message}: {detail}" if detail else message)


class InvalidMachineError(SandboxError):
    """The bundle evaluated, but its exports are not an XState machine plus authorizers."""


class HostError(SandboxError):
    """A fault of the host, not of the guest. These indicate a bug or a broken installation."""


class ProtocolError(HostError):
    """The guest's answer does not follow the contract in js_shims/host.d.ts."""
