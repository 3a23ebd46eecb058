"""Command line of :mod:`convnext_backbone.tools.benchmark` (see its docstring; `python tools/benchmark.py -h`)."""
from convnext_backbone.tools.benchmark import main

if __name__ == '__main__':
    main()
