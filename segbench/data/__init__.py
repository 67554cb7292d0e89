"""Data layer: MSD / nnU-Net raw readers, preflight validation, synthetic phantom, preprocessing, patches."""
