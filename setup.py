"""Package metadata comes from settings.ini (nbdev 2), so there is one place to edit it."""
from configparser import ConfigParser
from pathlib import Path

import shutil

import setuptools
from setuptools.command.build_py import build_py

cfg = ConfigParser(delimiters=["="])
cfg.read(Path(__file__).with_name("settings.ini"), encoding="utf-8")
cfg = cfg["DEFAULT"]

licenses = {"apache2": ("Apache Software License 2.0", "OSI Approved :: Apache Software License")}
statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable"]
lic = licenses[cfg["license"]]

requirements = cfg.get("requirements", "").split()
dev_requirements = cfg.get("dev_requirements", "").split()
console_scripts = cfg.get("console_scripts", "").split()
readme = Path(__file__).with_name("README.md")

ASSETS = {"nbs/train.ipynb": "train.ipynb", "nbs/report.ipynb": "report.ipynb", "experiments": "experiments"}


class BuildPyWithAssets(build_py):
    "build_py that also ships the papermill notebooks and the experiment specs in robustnb/assets (for wheels)."
    def run(self):
        super().run()
        root = Path(__file__).resolve().parent
        dest = Path(self.build_lib) / cfg["lib_path"] / "assets"
        for src, name in ASSETS.items():
            s, d = root / src, dest / name
            if not s.exists(): continue
            d.parent.mkdir(parents=True, exist_ok=True)
            if s.is_dir(): shutil.copytree(s, d, dirs_exist_ok=True)
            else: shutil.copyfile(s, d)


setuptools.setup(
    cmdclass={"build_py": BuildPyWithAssets},
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=readme.read_text(encoding="utf-8") if readme.exists() else "",
    long_description_content_type="text/markdown",
    license=lic[0],
    classifiers=[
        "Development Status :: " + statuses[int(cfg["status"]) - 1],
        "Intended Audience :: " + cfg["audience"].title(),
        "License :: " + lic[1],
        "Natural Language :: " + cfg["language"].title(),
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    url=cfg["git_url"],
    author=cfg["author"],
    author_email=cfg["author_email"],
    keywords=cfg["keywords"],
    packages=setuptools.find_packages(include=[cfg["lib_path"], cfg["lib_path"] + ".*"]),
    include_package_data=True,
    install_requires=requirements,
    extras_require={"dev": dev_requirements},
    python_requires=">=" + cfg["min_python"],
    zip_safe=False,
    entry_points={
        "console_scripts": console_scripts,
        "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
)
