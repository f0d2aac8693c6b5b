"""Everything that must be true before BCC is imported: root, tracefs mounted, headers chosen.

Import bcc only through `bcc_module()`, so the checks run first and give one clear error each.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from types import ModuleType

from tracer.kernel import headers, kernelfs
from tracer.output.errors import KernelError, NotRootError

_state: dict[str, object] = {}


def require_root(what: str = "tracing") -> None:
    if os.geteuid() != 0:
        raise NotRootError(what)


def header_choice() -> headers.HeaderChoice:
    bcc_module()
    choice = _state["headers"]
    assert isinstance(choice, headers.HeaderChoice)
    return choice


def bcc_module() -> ModuleType:
    """The `bcc` module, imported once the kernel side is ready."""
    module = _state.get("bcc")
    if isinstance(module, ModuleType):
        return module
    require_root()
    kernelfs.ensure_mounted()
    _state["headers"] = headers.prepare()
    try:
        import bcc  # imported late on purpose: BCC reads tracefs paths at import time
    except ImportError as err:
        raise KernelError(
            f"BCC's Python module cannot be imported ({err})",
            "install Debian's python3-bpfcc (sudo make setup) and run podtrace from the .venv it creates",
        ) from err
    _state["bcc"] = bcc
    return bcc


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Capture what C libraries (libbpf, clang) print on fd 2; the text lands in the yielded list."""
    lines: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode(errors="replace").splitlines())
