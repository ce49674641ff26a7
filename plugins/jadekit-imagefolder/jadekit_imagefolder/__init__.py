"""jadekit-imagefolder: the `imagefolder` dataset, class-per-folder image trees."""
