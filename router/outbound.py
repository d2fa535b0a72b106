"""One client request as it goes to the nodes (path, body, headers and model name per node),
and the headers its answer comes back to the client with."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

from router.aliases import renaming, rewrite_model
from router.records import RequestRecord
from router.registry import Node


@dataclass(frozen=True, slots=True)
class Outbound:
    """One client request as it will be sent upstream."""

    path: str
    body: bytes
    model: str
    correlation_id: str
    tenant_id: str | None
    session_id: str | None
    node_models: Mapping[str, str] = field(default_factory=dict)  # node id -> its model name
    model_in_body: bool = True
    stream: bool | None = None  # whether the client asked for a stream (None: not known)
    done_marker: bool = False  # an OpenAI stream, which must end with data: [DONE]

    def for_node(self, node: Node) -> tuple[str, bytes, str]:
        """Path, body and model name as this node knows the model (aliases applied)."""
        name = self.node_models.get(node.node_id, self.model)
        path = self.path
        if "{" in path:  # a native API's path names the model
            path = path.replace("{model}", quote(name, safe=""))
        if name == self.model or not self.model_in_body:
            return path, self.body, name
        return path, rewrite_model(self.body, name), name

    def headers_for(self, node: Node) -> dict[str, str]:
        """The headers the request goes to ``node`` with."""
        headers = {
            "Content-Type": "application/json",
            "X-Octopus-Correlation-Id": self.correlation_id,
        }
        if self.tenant_id is not None:
            headers["X-Octopus-Tenant-Id"] = self.tenant_id
        if self.session_id is not None:
            headers["X-Octopus-Session-Id"] = self.session_id
        if node.static:  # no agent beside the backend: rename as the agent would
            headers["X-Tenant-Id"] = self.tenant_id or ""
            headers["X-Correlation-Id"] = self.correlation_id
        return headers

    def renaming_for(self, node: Node) -> tuple[tuple[bytes, bytes], ...] | None:
        """How to rename the model in ``node``'s answer back to the client's name (None: the
        names are the same)."""
        node_name = self.node_models.get(node.node_id)
        return None if node_name is None else renaming(node_name, self.model)


def response_headers(
    content_type: str, node: Node, out: Outbound, record: RequestRecord
) -> dict[str, str]:
    """The answer's headers to the client; the moment they are made is its headers-out time."""
    record.t_headers_out = time.perf_counter()
    overhead = record.overhead_s or 0.0
    headers = {
        "Content-Type": content_type,
        "X-Correlation-Id": out.correlation_id,
        "X-Inference-Node": node.name,
        "X-Router-Attempts": str(record.attempts),
        "X-Router-Overhead-Ms": f"{overhead * 1000:.3f}",
    }
    if content_type.startswith("text/event-stream"):
        headers["Cache-Control"] = "no-cache"
        headers["X-Accel-Buffering"] = "no"
    return headers
