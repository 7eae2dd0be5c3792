"""Tests of medfoundry.pretext (a package: test_voco.py exists in tests/methods and tests/pretext)."""
