"""Loaded at start-up by tests that put this folder on PYTHONPATH: blocks and records every attempt at network
access (DNS lookups and TCP/UDP connections; local pipes and Unix sockets still work)."""
import os
import socket

_LOG = os.environ.get("LLM4SEG_NETWORK_LOG")
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _record(what: str) -> None:
    if _LOG:
        with open(_LOG, "a") as handle:
            handle.write(f"{os.getpid()} {what}\n")
    raise OSError(f"network access blocked by the offline test: {what}")


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _record(f"connect {address}")
    return _connect(self, address)


def _guarded_connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _record(f"connect_ex {address}")
    return _connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    _record(f"getaddrinfo {host}")


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex
socket.getaddrinfo = _guarded_getaddrinfo
