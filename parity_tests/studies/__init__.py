"""Precision, backend and ablation studies of V2V training (issue 7), run as

    python -m parity_tests.studies precision [--device cpu|gpu] [--steps N] [--grid G] [--width W] [--out DIR]
    python -m parity_tests.studies ablations [same options]

`overfit` trains one numerical configuration (a `Variant`) on a few synthetic samples, `plans` lists the studies'
configurations and sizes, `divergence` compares trained configurations block by block (on `parity_tests.compare`),
`study` runs a study and `report` writes its markdown, PNG and JSON.
"""
