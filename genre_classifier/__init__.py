"""Keras MFCC CNN genre classifier: train on genre folders, evaluate, tag unlabelled tracks."""
