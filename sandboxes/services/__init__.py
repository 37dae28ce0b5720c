"""Loopback HTTP services the environments' tools talk to: BM25 search and a stateful shop API."""
from sandboxes.services.server import (
    SERVICES,
    ServerThread,
    ServiceHandle,
    connect,
    embedded,
    embedded_threads,
    shutdown_embedded,
    wait_healthy,
)

__all__ = ["SERVICES", "ServerThread", "ServiceHandle", "connect", "embedded", "embedded_threads",
           "shutdown_embedded", "wait_healthy"]
