"""kalman-norm: Kalman Normalization (Wang et al., NeurIPS 2018) for TensorFlow/Tensorpack."""
from setuptools import find_packages, setup

setup(
    name="kalman-norm",
    version="0.1.0",
    description="Batch/Group Kalman Normalization and baselines as Tensorpack layers, "
                "with trainers reproducing the NeurIPS 2018 paper",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    # the architectures live in the top-level models/ folder and install as kalman_norm.models, so
    # that no top-level `models` package lands in site-packages
    packages=find_packages(include=["kalman_norm", "kalman_norm.*"]) + ["kalman_norm.models"],
    package_dir={"kalman_norm.models": "models"},
    # the fused prior's C++ source, compiled on first use (kalman_norm/ops/__init__.py)
    package_data={"kalman_norm.ops": ["*.cc"]},
    python_requires=">=3.10",
    install_requires=[
        # one TensorFlow wheel serves CPU and GPU machines (GPU kernels load when CUDA is present)
        "tensorflow==2.21.*",
        # tensorpack's layers need Keras 2 (tf.layers); kalman_norm sets TF_USE_LEGACY_KERAS=1
        "tf-keras==2.21.*",
        "tensorpack==0.11",
        "numpy>=1.24",
        "opencv-python-headless",
        "tabulate",
        # TOML configs: tomllib is in the standard library from Python 3.11; the same parser on 3.10
        "tomli>=1.1; python_version < '3.11'",
    ],
    extras_require={
        "test": ["pytest", "scipy"],
        "svhn": ["scipy"],
        # scripts/reproduce.py's reports: the figures and the claims' t-tests
        "plots": ["matplotlib", "scipy"],
    },
)
