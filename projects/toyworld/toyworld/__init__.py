"""A generated open-vocabulary world in which the whole RegionCLIP method runs on a CPU.

Modules: :mod:`.vocabulary` (shapes, colours, textures, backgrounds), :mod:`.scenes` (scene
generator), :mod:`.captions` (captions), :mod:`.world` (splits on disk, detectron2
registration), :mod:`.settings` (presets in ``presets/``), the stages :mod:`.train_clip` (1),
:mod:`.train_rpn` (2), :mod:`.pretrain` (3), :mod:`.evaluate` (4), :mod:`.transfer` (5),
:mod:`.visualize` (6), :mod:`.pipeline` (resumable orchestration), :mod:`.report`,
:mod:`.analysis`, :mod:`.ap` (AP50 with bootstrap), :mod:`.weights` (the shipped detector) and
:mod:`.demo` (``make demo``). Command line: ``tools/toyworld.py``; documentation:
docs/TOYWORLD.md. A project beside the library (``projects/toyworld``, installed editable by
``make install``) that uses ``regionclip`` through its public modules only. Nothing is imported
here, so ``import toyworld`` stays light.
"""
