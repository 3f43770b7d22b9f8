"""Test suite; a package so modules share helpers (``from tests.test_server import make_server``)."""
