"""The page's files: index.html and view.js from this package, plotly.min.js from the plotly package
(the optional extra `convscope[view]`), so that everything is served locally and works offline."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from convscope.errors import ConfigError

MISSING_PLOTLY = "convscope view and compare draw with plotly, which is not installed: pip install 'convscope[view]'"


def plotly_js_path() -> Path:
    """plotly.min.js as the plotly Python package ships it (never copied into convscope)."""
    try:
        import plotly
    except ImportError:
        raise ConfigError(MISSING_PLOTLY) from None
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise ConfigError(f"plotly is installed but has no {path}; reinstall it: pip install --force-reinstall plotly")
    return path


def static_text(name: str) -> str:
    """index.html or view.js."""
    return resources.files("convscope.view").joinpath("static", name).read_text(encoding="utf-8")
