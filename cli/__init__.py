"""The ``nact`` command line: parse, call the neuron_activity library once, render."""
