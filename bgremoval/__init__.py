"""bgremoval: fine-tune, track, gate and serve image background-removal models.

The library, in the order its parts may import each other (each only from those before it):

    images, pictures, locks, quiet, tracking, weights   shared ground: safe image reading, grids, locks, MLflow, weights files
    data/       prepare, validate, augment: masks, the manifest, splits, the suite, augmentation, shards
    serving/    the served model: runtime (onnxruntime, or Keras for a .keras file), refinement, requests, pyfunc
    scoring/    metrics, scoring a predictor on a split, report pictures (baseline and evaluate)
    model/      the networks: U²-NetP with rembg's weights, a U-Net
    training/   tune and train: losses, the fit loop, blending, the Optuna study
    export/     from the trained model to the served one, its set-up chosen on val
    registry/   register: the MLflow registry and the champion gate
    labelling/  masks for a folder of photos: ranked drafts, corrected in Label Studio
    cli, demo, video   the `bgremoval` command, its local try-it page, and cutting out video files

serving/ comes early because export builds it, evaluate scores it and register ships it; it and images.py
are all the registered model carries.
"""

__version__ = "0.1.0"
