"""The import-time dependency check gives an actionable error instead of a deep traceback."""
import sys
import types

import pytest

from regionclip import _deps


def test_version_tuple_parses_local_and_rc_versions():
    assert _deps._version_tuple("2.14.1+cu130") == (2, 14, 1)
    assert _deps._version_tuple("0.7.2") == (0, 7, 2)
    assert _deps._version_tuple("2.0.0rc1") == (2, 0, 0)
    # the fork's version string sorts below any minimum
    assert _deps._version_tuple("RegionCLIP") == ()


def test_missing_module_names_it_and_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "detectron2",
                        None)  # makes `import detectron2` raise ImportError
    with pytest.raises(ImportError) as err:
        _deps.check_dependencies()
    msg = str(err.value)
    assert "detectron2 >= 0.6" in msg and "make install" in msg


def test_too_old_module_reports_found_version(monkeypatch):
    fake = types.ModuleType("detectron2")
    fake.__version__ = "0.4"
    fake.__file__ = "/somewhere/detectron2/__init__.py"
    monkeypatch.setitem(sys.modules, "detectron2", fake)
    with pytest.raises(ImportError) as err:
        _deps.check_dependencies()
    assert "found 0.4" in str(err.value) and "/somewhere/detectron2" in str(err.value)


def test_the_forks_version_string_is_rejected(monkeypatch):
    fake = types.ModuleType("detectron2")
    fake.__version__ = "RegionCLIP"  # the original fork set this; it is a 2021 detectron2
    monkeypatch.setitem(sys.modules, "detectron2", fake)
    with pytest.raises(ImportError, match="found RegionCLIP"):
        _deps.check_dependencies()


def test_current_environment_passes():
    _deps.check_dependencies()
