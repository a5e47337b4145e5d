"""Everything is in pyproject.toml; this only ships configs/ inside the wheel as evo_pai/configs.

configs/ stays the one copy in git (README and docs use `configs/quickstart.yaml`); an installed
evo-pai finds them by name (`evo-pai run quickstart`, `evo-pai init`) through evo_pai.core.config.shipped_configs.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class build_py_with_configs(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "evo_pai" / "configs"
        self.mkpath(str(target))
        for src in sorted(Path(__file__).resolve().parent.joinpath("configs").glob("*.yaml")):
            self.copy_file(str(src), str(target / src.name))


setup(cmdclass={"build_py": build_py_with_configs})
