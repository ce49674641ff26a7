"""Dataset adapters (SVHN, MNIST, USPS), labelled-subset splits and batch sampling."""
