"""Command line of :mod:`convnext_backbone.tools.get_flops` (see its docstring; `python tools/get_flops.py -h`)."""
from convnext_backbone.tools.get_flops import main

if __name__ == '__main__':
    main()
