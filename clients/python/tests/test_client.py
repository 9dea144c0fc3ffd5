"""Unit tests of attestd_agent that need no attestd (the end-to-end tests
in tests/e2e drive it against the real daemon)."""

import os
import unittest
from unittest import mock

import attestd_agent
from attestd_agent.client import SECURITY_HEADER


class SocketTarget(unittest.TestCase):
    def test_addresses_like_the_cli(self):
        for address in ("unix:///run/a.sock", "unix:/run/a.sock", "/run/a.sock"):
            self.assertEqual(attestd_agent.socket_target(address), "unix:/run/a.sock")
        for bad in ("tcp://127.0.0.1:1", "unix://relative", "relative"):
            with self.assertRaises(ValueError):
                attestd_agent.socket_target(bad)

    def test_environment_then_default(self):
        with mock.patch.dict(os.environ, {"SPIFFE_ENDPOINT_SOCKET": "unix:///env.sock"}):
            self.assertEqual(attestd_agent.socket_target(), "unix:/env.sock")
        with mock.patch.dict(os.environ, {}, clear=True):
            self.assertEqual(attestd_agent.socket_target(), "unix:/run/attestd/api.sock")

    def test_requests_carry_the_security_header(self):
        self.assertEqual(SECURITY_HEADER, (("workload.spiffe.io", "true"),))


class Errors(unittest.TestCase):
    def test_a_refused_call_raises_with_attestds_reason(self):
        # No server on this socket: the call fails, and the error keeps the
        # gRPC code and message.
        with attestd_agent.Client("unix:///nonexistent/attestd.sock", timeout=2) as client:
            with self.assertRaises(attestd_agent.AttestdError) as raised:
                client.list_tasks()
        self.assertEqual(raised.exception.code.name, "UNAVAILABLE")


if __name__ == "__main__":
    unittest.main()
