"""pip installation of the three Python packages (distribution ``dfanet``).

The ROS package (messages, node executable, launch and config) is built by CMakeLists.txt; this
file serves ``pip install`` of the pure-Python parts and the ``dfanet`` command.  The
distribution is named ``dfanet``, not ``dfanet_ros``: pip would otherwise treat the messages the
CMake build installed under that name as its own and remove them on reinstall.
"""
from setuptools import find_packages, setup

setup(
    name="dfanet",
    version="0.1.0",
    description="DFANet semantic segmentation: PyTorch model package and ROS 2 node",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["dfanet_model*", "dfanet_ros*", "dfanet_tools*"]),
    package_data={"dfanet_model": ["data/*", "data/*/*", "data/*/*/*"]},
    include_package_data=True,
    install_requires=["numpy", "pyyaml", "pillow", "safetensors", "torch>=2.4"],
    extras_require={
        "ros": ["rosbags", "mcap", "opencv-python-headless"],
        "export": ["onnx", "onnxruntime", "onnxscript", "openvino"],
        "test": ["pytest", "hypothesis"],
    },
    entry_points={
        "console_scripts": [
            "dfanet = dfanet_tools.cli:main",
            "dfanet-segmentation-node = dfanet_ros.startup:main",
        ]
    },
)
