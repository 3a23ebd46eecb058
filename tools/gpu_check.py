"""Command line of :mod:`convnext_backbone.tools.gpu_check` (see its docstring; `python tools/gpu_check.py -h`)."""
from convnext_backbone.tools.gpu_check import cli

if __name__ == '__main__':
    cli()
