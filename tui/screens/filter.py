"""`/`: the view filter, on a modal screen of its own at the bottom.

A screen rather than a widget in the main view: while it is open every key goes to its input (nothing reaches the
views' bindings: no sorts, view changes or drill-downs), focus cannot wander off it, and each opening starts fresh.
A bad expression keeps the screen open with libpcap's error under the input.
"""

from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from tracer.output.errors import UsageError


class FilterScreen(ModalScreen[str | None]):
    """Dismissed with the accepted expression ("" clears the filter), or None on Esc."""

    DEFAULT_CSS = """
    FilterScreen { align: center bottom; background: $background 30%; }
    FilterScreen > Vertical { height: auto; width: 100%; background: $panel; }
    FilterScreen #filter-error { color: $error; height: auto; padding: 0 1; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, current: str, check: Callable[[str], object]) -> None:
        super().__init__()
        self.current = current
        self.check = check  # raises UsageError on a bad expression

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Input(value=self.current, placeholder="tcpdump filter, e.g. udp port 53 (empty: show everything)",
                        id="filter-input")
            yield Static("", id="filter-error")

    def on_mount(self) -> None:
        field = self.query_one(Input)
        field.cursor_blink = not self.app.is_headless  # steady pictures in tests
        field.focus()

    def on_input_submitted(self, message: Input.Submitted) -> None:
        message.stop()
        expression = message.value.strip()
        if expression:
            try:
                self.check(expression)
            except UsageError as err:
                self.query_one("#filter-error", Static).update(err.one_line())
                self.query_one(Input).focus()
                return
        self.dismiss(expression)

    def on_input_changed(self, _message: Input.Changed) -> None:
        self.query_one("#filter-error", Static).update("")  # the error was about the text before this edit

    def action_cancel(self) -> None:
        self.dismiss(None)
