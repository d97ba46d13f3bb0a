"""`import fedssl` turns on torch's huge-page CPU allocation unless the user chose otherwise."""

import os
import subprocess
import sys

import pytest

PROBE = "import os, fedssl; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))"


@pytest.mark.parametrize(("given", "expected"), [(None, "1"), ("0", "0"), ("1", "1")])
def test_import_sets_thp_default_without_overriding(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if given is not None:
        env["THP_MEM_ALLOC_ENABLE"] = given
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == expected
