"""Output formats kept in modules of their own (``amg``: segment-anything's ``amg.py`` folders;
``polygons``: COCO polygons and LabelMe files)."""
