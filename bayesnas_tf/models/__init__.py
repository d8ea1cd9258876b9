"""Keras models: the search supernet and the derived child networks."""
