"""Textual's Footer, recomposed only when the keys it shows change.

Textual's Footer rebuilds all its key widgets whenever the screen's bindings are updated: on every focus change
and refresh_bindings(), so three to nine times per view key. Under a drop storm that rebuild (widgets mounted,
CSS applied) was most of a key's cost on the UI thread; the keys it shows change only on the Services view (`s`)
and on modal screens."""

from __future__ import annotations

from textual.screen import Screen
from textual.widgets import Footer


def shown_keys(screen: Screen[object]) -> tuple[tuple[str, str, str, bool], ...]:
    """What a Footer draws from the screen's active bindings: key, description, action, enabled."""
    return tuple((binding.key, binding.description, binding.action, enabled)
                 for _node, binding, enabled, _tooltip in screen.active_bindings.values() if binding.show)


class QuietFooter(Footer):
    _shown: tuple[tuple[str, str, str, bool], ...] | None = None

    def bindings_changed(self, screen: Screen[object]) -> None:
        if not (self.is_attached and screen is self.screen):
            super().bindings_changed(screen)
            return
        shown = shown_keys(screen)
        if shown == self._shown and self._bindings_ready:
            return  # the same keys: nothing to rebuild
        if screen.app.app_focus:  # Footer itself skips the rebuild without focus: the next change does it
            self._shown = shown
        super().bindings_changed(screen)
