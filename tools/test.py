"""Command line of :mod:`convnext_backbone.tools.test` (see its docstring; `python tools/test.py -h`)."""
from convnext_backbone.tools.test import main

if __name__ == '__main__':
    main()
