"""What a host agent offers besides `Engine`: the calls only a cluster makes.

The host API carries these as it carries every `Engine` method (methods.py
reads both interfaces), so the router can call them on a `RemoteEngine`.
"""

from __future__ import annotations

import abc

from arker.engine.base import Limits, NetworkPolicy

__all__ = ["HostExtras"]


class HostExtras(abc.ABC):
    @abc.abstractmethod
    def adopt(
        self,
        vm_id: str,
        *,
        hostname: str,
        limits: Limits | None = None,
        network: NetworkPolicy | None = None,
    ) -> str | None:
        """Take over a durable VM whose host was lost: restore its latest
        complete checkpoint from the blob store here; the checkpoint's id,
        or None when there was none."""
