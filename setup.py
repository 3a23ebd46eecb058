"""convnext_backbone: the ConvNeXt backbone plugin for OpenMMLab 2.x (mmdet 3, mmseg 1, mmpretrain, any mmengine
codebase).

    pip install -e .            # torch + mmengine: the backbone, checkpoint loading, the lr-decay constructor
    pip install -e .[det]       # + mmdet (and mmcv) for the detection configs and tools
    pip install -e .[seg]       # + mmsegmentation
    pip install -e .[all]       # everything the configs and tools use (what `make install` installs)

Version ranges here are what the code is written for; the one tested stack is pinned in
requirements/constraints.txt and installed by tools/install.sh (mmcv must be compiled).
"""
from setuptools import find_packages, setup

setup(
    name='convnext_backbone',
    version='0.1.0',
    description='ConvNeXt (V1/V2) backbone, checkpoint interop and layer-wise lr decay '
                'for OpenMMLab 2.x (mmdetection 3, mmsegmentation 1, mmpretrain, any mmengine codebase)',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.9',
    packages=find_packages(include=['convnext_backbone', 'convnext_backbone.*']),
    # The package itself needs only torch and mmengine (and safetensors to read .safetensors files): it
    # registers into mmengine's root registries, which every OpenMMLab 2.x codebase searches.
    install_requires=[
        'torch>=2.7',  # torch.compiler.is_exporting
        'mmengine>=0.10,<0.11',
        'safetensors>=0.4',
        'numpy',
    ],
    extras_require={
        # mmdetection: the detection configs and tools
        'det': ['mmcv>=2.0,<2.2', 'mmdet>=3.3,<3.4'],
        # mmsegmentation (1.2 imports ftfy and regex at import time without declaring them)
        'seg': ['mmcv>=2.0,<2.2', 'mmsegmentation>=1.2,<1.3', 'ftfy', 'regex'],
        # timm: tools/benchmark.py's reference
        'timm': ['timm>=0.9'],
        # onnx + onnxruntime: tools/export.py (export to ONNX, check in ONNX Runtime)
        'deploy': ['onnx', 'onnxruntime'],
        'all': ['mmcv>=2.0,<2.2', 'mmdet>=3.3,<3.4', 'mmsegmentation>=1.2,<1.3', 'ftfy', 'regex', 'timm>=0.9'],
        # reference implementations and exporters the tests use (never imported by the package); mmpretrain
        # itself is installed with --no-deps by tools/install.sh, its import-time needs are listed here
        'tests': ['pytest>=8', 'pytest-xdist', 'matplotlib', 'transformers>=5', 'onnx', 'onnxruntime', 'onnxscript',
                  'einops', 'importlib-metadata', 'mat4py', 'modelindex', 'rich'],
    },
)
