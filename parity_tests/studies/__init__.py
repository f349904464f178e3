"""Precision, backend and ablation studies of V2V training, run as

    python -m parity_tests.studies precision [--device cpu|gpu] [--steps N] [--grid G] [--width W] [--out DIR]
    python -m parity_tests.studies ablations [same options]

`overfit` trains one numerical configuration (a `Variant`) on a few synthetic samples, `plans` lists the studies'
configurations and sizes, `divergence` compares trained configurations block by block (on `parity_tests.compare`),
`study` runs a study and `report` writes its markdown, PNG and JSON. They answer the PyTorch port's author, who
could fit one sample with cuDNN in float64 or without cuDNN in float32, but not with cuDNN in float32
(dragonbook/V2V-PoseNet-pytorch, doc/some-notes.txt, removed in fa1603b); docs/studies/precision.md has the answers.
"""
