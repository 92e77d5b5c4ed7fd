"""Model zoo. Each module registers builders in `kdlab.registry.MODELS`.

A builder is called as `builder(num_classes=..., input_shape=..., **params)` and returns an
`nn.Module`. Models may carry two plain attributes used by distillation methods:
`hint_points` (module paths of stage outputs, shallow to deep) and `stages` (module paths
of stem, stages and head, for growing a student grade by grade).
"""
