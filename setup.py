"""Build hook: the wheel carries the checkout's ablations/*.yaml as the package data ``pamm/ablations``.

ablations/ stays the one source (next to the workflow, where users add overlays); an installed pamm reads the
copy (``pamm.config.ABLATIONS_DIR``). Everything else about the package is in pyproject.toml."""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithOverlays(build_py):
    """build_py that also copies ablations/*.yaml into the built package as pamm/ablations/."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the checkout's ablations/ itself
            return
        source = Path(__file__).resolve().parent / "ablations"
        target = Path(self.build_lib) / "pamm" / "ablations"
        overlays = sorted(source.glob("*.yaml"))
        if not overlays:
            raise SystemExit(f"setup.py: no overlays in {source}: build from a full checkout (ablations/*.yaml)")
        self.mkpath(str(target))
        for path in overlays:
            self.copy_file(str(path), str(target / path.name))


setup(cmdclass={"build_py": BuildPyWithOverlays})
