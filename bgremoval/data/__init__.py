"""The data stages' library: reading masks, the manifest and its splits, validation, augmentation, shards."""
