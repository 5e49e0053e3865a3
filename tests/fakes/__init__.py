"""Scripted fake servers on real loopback sockets, for faults a real server will not produce."""
