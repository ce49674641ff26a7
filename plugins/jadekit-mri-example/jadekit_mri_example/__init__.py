"""jadekit-mri-example: the `mri-slices` dataset and the `mri-cnn64` backbone."""
