"""The pipeline's stages, one module (or small package) each, holding the
logic that the stage's command (:mod:`wsss_fast.commands`) calls:

- :mod:`.classify` (``train-cls``) with :mod:`.sccam` (SC-CAM's sub-category labels)
- :mod:`.cam` (``make-cam``)
- :mod:`.refine` (``train-refine``, DRS refinement learning)
- :mod:`.labels` (``make-labels``, pseudo labels from CAMs)
- :mod:`.affinity_labels` (``make-aff-labels``), :mod:`.affinity` (``train-aff``)
- :mod:`.random_walk` (``rw``)
- :mod:`.segment` (``train-seg``, ``infer-seg``)

Imports run one way: commands -> stages -> models, ops, data and the
infrastructure modules (training loop, inference helpers, storage, config,
pipeline, distributed, eval, crf, report, plots, transforms); nothing below
the stages imports them (``tests/test_layout.py``).
"""
