"""Command line of :mod:`convnext_backbone.tools.export` (see its docstring; `python tools/export.py -h`)."""
from convnext_backbone.tools.export import main

if __name__ == '__main__':
    main()
