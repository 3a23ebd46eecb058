"""convnext_backbone: the ConvNeXt backbone plugin for OpenMMLab 2.x (mmdet 3, mmseg 1, mmpretrain, any mmengine
codebase).

    pip install -e .            # into a project that has mmengine (OpenMMLab's or onedl's): moves nothing of it
    pip install -e .[det]       # from scratch: + OpenMMLab's mmengine, mmcv and mmdet for the detection configs
    pip install -e .[seg]       # + OpenMMLab's mmsegmentation
    pip install -e .[all]       # OpenMMLab's everything the configs and tools use (+ timm, onnx, onnxruntime)
    pip install -e .[onedl]     # the same from the onedl fork's distributions instead

install_requires are the lowest versions the stack suite proves (docs/stack.md): the classic stack (torch 2.1)
and the onedl stack install this package without a change to their torch, mmcv, mmengine, mmdet or mmseg. mmengine
is imported, not required: OpenMMLab ships it as `mmengine`, the onedl fork as `onedl-mmengine` (the same
module), and naming either would make pip replace the other. The tested stacks are requirements/<stack>.txt,
installed by tools/install.sh (mmcv must be compiled).
"""
from setuptools import find_packages, setup

# Each extra once; `all` and `onedl` are made of them.
OPENMMLAB = ['mmengine>=0.10,<0.11', 'mmcv>=2.0,<2.2']  # OpenMMLab's distributions
DET = OPENMMLAB + ['mmdet>=3.3,<3.4']  # mmdetection: the detection configs and tools
SEG = OPENMMLAB + ['mmsegmentation>=1.2,<1.3', 'ftfy', 'regex']  # mmseg 1.2 imports ftfy / regex undeclared
TIMM = ['timm>=0.9']  # tools/benchmark.py's reference
DEPLOY = ['onnx', 'onnxruntime']  # tools/export.py: export to ONNX, check in ONNX Runtime

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
    # registers into mmengine's root registries, which every OpenMMLab 2.x codebase searches. mmengine is checked
    # at import (either distribution), see the docstring.
    install_requires=[
        'torch>=2.1',
        'safetensors>=0.4',
        'numpy',
    ],
    extras_require={
        'det': DET,
        'seg': SEG,
        'timm': TIMM,
        'deploy': DEPLOY,
        'all': list(dict.fromkeys(DET + SEG + TIMM + DEPLOY)),
        # the onedl fork's distributions (same modules): never mix them with the OpenMMLab extras above
        'onedl': ['onedl-mmengine>=0.10.12', 'onedl-mmcv>=2.3', 'onedl-mmdetection>=3.5',
                  'onedl-mmsegmentation>=1.4'] + TIMM + DEPLOY,
        # reference implementations and exporters the tests use (never imported by the package); mmpretrain
        # itself is installed with --no-deps by tools/install.sh, its import-time needs are listed here
        'tests': ['pytest>=8', 'pytest-xdist', 'matplotlib', 'transformers>=5', 'onnx', 'onnxruntime', 'onnxscript',
                  'einops', 'importlib-metadata', 'mat4py', 'modelindex', 'rich'],
    },
)
