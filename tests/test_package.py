"""The package's front: a lazy public API (no torch on `import convscope`), and a CLI whose help loads no torch."""

from __future__ import annotations

import importlib
import subprocess
import sys

import convscope


def run_python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_import_convscope_loads_no_torch():
    assert run_python("import convscope, sys; print('torch' in sys.modules, 'numpy' in sys.modules)") == "False False"


def test_cli_help_loads_no_torch():
    code = ("import sys\nfrom convscope.cli import app\n"
            "try:\n    app(['--help'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = run_python(code)
    assert out.splitlines()[-1] == "False"
    assert "lr-find" in out and "bs-sweep" in out  # every command is registered


def test_every_public_name_resolves_to_its_defining_module():
    names = set(convscope.__all__) - {"__version__"}
    assert names == set(convscope._EXPORTS)  # the list in __all__ and the lazy table agree
    for name in sorted(names):
        value = getattr(convscope, name)
        module = importlib.import_module(convscope._EXPORTS[name])
        assert getattr(module, name) is value, name
    assert convscope.__version__ == importlib.import_module("convscope._version").__version__


def test_an_unknown_name_is_an_attribute_error():
    try:
        convscope.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("convscope.no_such_thing did not raise")
