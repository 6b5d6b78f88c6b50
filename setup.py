"""CNET: a distributed agent for resource management and workload scheduling."""
from setuptools import find_packages, setup

setup(
    name="cnet",
    version="0.1.0",
    description="Distributed agent for resource management and workload scheduling",
    python_requires=">=3.11",
    packages=find_packages(include=["cnet", "cnet.*", "bus", "bus.*", "services", "services.*"]),
    package_data={"cnet": ["openapi.json"], "services.inference": ["openapi.json"],
                  "services.gateway": ["openapi.json"]},
    install_requires=[
        "pyzmq>=25",
        "msgpack>=1.0",
        "tornado>=6.3",
        "peewee>=3.17",
        "psutil>=5.9",
        "pyyaml>=6.0",
        "prometheus-client>=0.19",
        "numpy>=1.24",
        "onnxruntime>=1.16",
        "opencv-python-headless>=4.8,<5",  # 5.x dropped CascadeClassifier and the bundled cascades
        "python-multipart>=0.0.9",
        "docker>=7.0",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.2",
            "requests>=2.31",
            "boto3>=1.34",
            "scikit-image>=0.22",
            "playwright>=1.40",
            "ruff>=0.4",
            "onnx>=1.16",                     # tests build small YOLO graphs of known output
            "openapi-spec-validator>=0.7",    # the REST API's OpenAPI document is valid
            "schemathesis>=4,<5",             # and a live agent answers as it says
            "jsonschema-rs>=0.20",            # JSON Schema's own regex rules, for those checks
            "hypothesis>=6",
        ],
        # GPUs: ONNX Runtime's CUDA provider (it replaces the CPU-only onnxruntime package:
        # pip uninstall onnxruntime first) and NVML for the devices and their measured use.
        "gpu": ["onnxruntime-gpu>=1.17", "nvidia-ml-py>=12"],
    },
    entry_points={
        "console_scripts": [
            "cnet=cnet.cli:main",
            "cnet-agent=cnet.cli:agent_main",
            "cnet-inference-yolo=services.inference.yolo_service:main",
            "cnet-inference-opencv=services.inference.opencv_service:main",
            "cnet-gateway-data=services.gateway.main:main",
        ],
    },
)
