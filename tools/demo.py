"""Command line of :mod:`convnext_backbone.demo.detection` (see its docstring; `python tools/demo.py -h`)."""
from convnext_backbone.demo.detection import main

if __name__ == '__main__':
    main()
