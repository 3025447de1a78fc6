"""A small Server-Sent Events reader for the tests: (event, id, data) tuples."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Event:
    event: str
    id: str | None
    data: str


def events(response: httpx.Response) -> Iterator[Event | None]:
    """The events of a streamed response; None for each comment (keep-alive)."""
    event, eid, data = "message", None, []
    for line in response.iter_lines():
        if line.startswith(":"):
            yield None
        elif not line:
            if data:
                yield Event(event, eid, "\n".join(data))
            event, eid, data = "message", None, []
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "id":
                eid = value
            elif name == "data":
                data.append(value)
