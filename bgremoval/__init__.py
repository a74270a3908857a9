"""bgremoval: fine-tune, track, gate and serve image background-removal models.

The library, in the order its parts may import each other (each only from those before it):

    images, pictures, locks, quiet,     shared ground: safe image reading, grids, locks, MLflow, weights files,
    tracking, weights, network_io,      the network's input and output (network_io) and its custom Keras layers
    keras_layers
    data/       prepare, validate, augment: masks, the manifest, splits, the suite, augmentation, shards
    model/      the networks: U²-NetP with rembg's weights, a U-Net
    training/   tune and train: the configuration, losses, the fit loop, blending, the Optuna study
    serving/    the served model: runtime (onnxruntime, or Keras for a .keras file), refinement, requests, pyfunc
    scoring/    metrics, scoring a predictor on a split, report pictures (baseline and evaluate)
    export/     from the trained model to the served one, its set-up chosen on val
    registry/   register: the MLflow registry and the champion gate
    labelling/  masks for a folder of photos: ranked drafts, corrected in Label Studio
    cli, demo, video   the `bgremoval` command, its local try-it page, and cutting out video files

Training never imports serving: what both feed a network and read back (network_io) and the layers a saved
network holds (keras_layers) sit below both, so an edit to how a cut-out is served leaves tune and train up to
date. The registered model carries serving/ with images, quiet, network_io and keras_layers.
"""

__version__ = "0.1.0"
