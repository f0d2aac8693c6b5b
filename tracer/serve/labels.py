"""Bounded label values: a Prometheus series per Service only for the busiest N, the rest share "other".

A label value keeps its series while it stays among the top N by its running total; ranking is redone at each
`rerank()`, so a quiet Service can lose its series to a busier one (its counter then stops being exported and a
later return starts it again from zero, which PromQL's rate() reads as a counter reset). Totals are kept for at
most `track` values: past that the smallest half is forgotten, so memory stays bounded on any cluster.
"""

from __future__ import annotations

OTHER = "other"


class TopN:
    def __init__(self, limit: int, track: int | None = None) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.track = max(track or 20 * limit, limit * 2)
        self.totals: dict[str, int] = {}
        self.admitted: set[str] = set()

    def label(self, value: str, weight: int = 1) -> str:
        """The label to count `value` under now ("" stays "": no Service is not a Service)."""
        if not value:
            return value
        self.totals[value] = self.totals.get(value, 0) + weight
        if value in self.admitted:
            return value
        if len(self.admitted) < self.limit:
            self.admitted.add(value)
            return value
        if len(self.totals) > self.track:
            self._forget()
        return OTHER

    def rerank(self) -> set[str]:
        """Admit the top `limit` by total; returns the values that lost their series."""
        ranked = sorted(self.totals.items(), key=lambda item: (-item[1], item[0]))[: self.limit]
        keep = {value for value, _ in ranked}
        dropped = self.admitted - keep
        self.admitted = keep
        return dropped

    def _forget(self) -> None:
        ranked = sorted(self.totals.items(), key=lambda item: -item[1])
        self.totals = dict(ranked[: self.track // 2])
        for value in self.admitted:
            self.totals.setdefault(value, 0)
