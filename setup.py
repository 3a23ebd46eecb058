"""convnext_backbone: the ConvNeXt backbone plugin for OpenMMLab 2.x (mmdet 3 / mmseg 1).

Version ranges here are what the code works with; the exact tested stack is pinned in
requirements/constraints.txt and installed by tools/install.sh (mmcv must be compiled).
"""
from setuptools import find_packages, setup

setup(
    name='convnext_backbone',
    version='0.1.0',
    description='ConvNeXt (V1/V2) backbone, checkpoint interop and layer-wise lr decay '
                'for mmdetection 3 and mmsegmentation 1',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.9',
    packages=find_packages(include=['convnext_backbone', 'convnext_backbone.*']),
    install_requires=[
        'torch>=2.0',
        'mmengine>=0.10,<0.11',
        'mmcv>=2.0,<2.2',
        'mmdet>=3.3,<3.4',
        'mmsegmentation>=1.2,<1.3',
        'timm>=0.9',
        'safetensors>=0.4',
        'numpy',
        # mmseg 1.2 imports these at package import time without declaring them
        'ftfy',
        'regex',
    ],
    extras_require={
        # reference implementations and exporters the tests use (never imported by the package); mmpretrain
        # itself is installed with --no-deps by tools/install.sh, its import-time needs are listed here
        'tests': ['pytest>=8', 'matplotlib', 'transformers>=5', 'onnx', 'onnxruntime', 'onnxscript',
                  'einops', 'importlib-metadata', 'mat4py', 'modelindex', 'rich'],
    },
)
