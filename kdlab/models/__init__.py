"""Model zoo. Each module registers builders in `kdlab.registry.MODELS`.

A builder is called as `builder(num_classes=..., input_shape=..., **params)` and returns an
`nn.Module`. Zoo models (`base.ZooModel`) also carry `hint_points` (module paths of stage
outputs, shallow to deep, for feature methods) and `stage_names`/`stage_channels` with
`features(x, upto)` and `classify` (for growing a student grade by grade). `build.py` is the
one place a model is built from its config section (zoo name, `import:` or `hf:`).
"""
