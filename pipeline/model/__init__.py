"""The model: preprocessing and heart localisation, the network, the lesion classifier, weights and inference."""
