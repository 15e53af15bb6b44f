"""tests/gpu is a package: its conftest is then gpu.conftest, never the tests' own `conftest` module that
other tests import (from conftest import BASE_SPEC)."""
