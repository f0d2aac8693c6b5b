"""A key as the terminal driver delivers it, for harnesses that drive the real app (the TUI benchmark).

Pilot.press is not that: it also waits for the whole process to look idle (wait_for_idle, up to 1 s, twice),
which a storm never lets happen."""

from __future__ import annotations

from typing import Any

from textual import events


def deliver_key(app: Any, key: str) -> None:
    """`key` into the app's driver, as a terminal's input thread posts it."""
    event = events.Key(key, key)
    event.set_sender(app)
    app._driver.send_message(event)  # the driver is what a real terminal feeds
