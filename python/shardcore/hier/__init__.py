"""Communicators over several hosts: shared memory inside each host, gloo between hosts."""

from .communicator import HierCommunicator
from .rendezvous import build, connect
from .topology import Topology, host_identity

__all__ = ["HierCommunicator", "Topology", "build", "connect", "host_identity"]
