"""Command line of :mod:`convnext_backbone.tools.train` (see its docstring; `python tools/train.py -h`)."""
from convnext_backbone.tools.train import cli

if __name__ == '__main__':
    cli()
