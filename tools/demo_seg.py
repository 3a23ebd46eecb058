"""Command line of :mod:`convnext_backbone.demo.segmentation` (see its docstring; `python tools/demo_seg.py -h`)."""
from convnext_backbone.demo.segmentation import main

if __name__ == '__main__':
    main()
