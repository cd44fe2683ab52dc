"""nanoloom's own helpers below every package: atomic files (files.py), devices and dtypes (device.py), the
network check (net.py). They import nothing of nanoloom's model, data, sample or train."""
