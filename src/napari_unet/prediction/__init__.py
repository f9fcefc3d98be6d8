"""Prediction: settings, overlap-tile prediction, post-processing, batch and cluster runs."""
